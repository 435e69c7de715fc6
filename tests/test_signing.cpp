// Ed25519 signing and key files: round trips, wrong keys, tampering, file modes, no overwrite.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "engine/base/fs_util.h"
#include "engine/trust/signing.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using testing::expect_error;

struct Pair {
  std::string priv, pub;
};

Pair new_pair(const std::string& dir, const std::string& name) {
  Pair p{dir + "/" + name + ".pem", dir + "/" + name + ".pub.pem"};
  generate_signing_keypair(p.priv, p.pub);
  return p;
}

unsigned mode_of(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

// The base64 body of a PEM file: what must never show up in an error message.
std::string pem_body(const std::string& path) {
  std::string pem = read_file(path);
  size_t b = pem.find('\n') + 1, e = pem.find("-----END");
  return pem.substr(b, e - b - 1);
}

TEST(Signing, KeygenWritesPemPairWithPrivateMode0600) {
  const std::string dir = testing::make_temp_dir("sign");
  const Pair p = new_pair(dir, "k");
  EXPECT_EQ(mode_of(p.priv), 0600u);
  EXPECT_NE(read_file(p.priv).find("-----BEGIN PRIVATE KEY-----"), std::string::npos);
  EXPECT_NE(read_file(p.pub).find("-----BEGIN PUBLIC KEY-----"), std::string::npos);
  // No temp files are left beside the keys.
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) (void)e, ++entries;
  EXPECT_EQ(entries, 2);
  // Both halves name the same key; another pair is another key.
  EXPECT_EQ(public_key_sha256(p.priv), public_key_sha256(p.pub));
  EXPECT_EQ(public_key_sha256(p.pub).size(), 64u);
  const Pair q = new_pair(dir, "q");
  EXPECT_NE(public_key_sha256(p.pub), public_key_sha256(q.pub));
  EXPECT_NE(read_file(p.priv), read_file(q.priv));
}

TEST(Signing, KeygenRefusesToOverwrite) {
  const std::string dir = testing::make_temp_dir("sign");
  const Pair p = new_pair(dir, "k");
  const std::string priv = read_file(p.priv), pub = read_file(p.pub);
  expect_error([&] { generate_signing_keypair(p.priv, dir + "/other.pub.pem"); },
               {p.priv, "already exists"});
  expect_error([&] { generate_signing_keypair(dir + "/other.pem", p.pub); },
               {p.pub, "already exists"});
  EXPECT_EQ(read_file(p.priv), priv);
  EXPECT_EQ(read_file(p.pub), pub);
  // A refusal writes neither half.
  EXPECT_FALSE(path_exists(dir + "/other.pem"));
  EXPECT_FALSE(path_exists(dir + "/other.pub.pem"));
  expect_error([&] { generate_signing_keypair(dir + "/x.pem", dir + "/x.pem"); }, {"two names"});
  expect_error([&] { generate_signing_keypair(dir + "/no/such/a.pem", dir + "/no/such/a.pub"); },
               {dir + "/no/such/a.pem"});
}

TEST(Signing, SignVerifyRoundTripAndWrongKey) {
  const std::string dir = testing::make_temp_dir("sign");
  const Pair a = new_pair(dir, "a"), b = new_pair(dir, "b");
  const std::string msg = "{\"format\": \"ftune-manifest/1\"}\n";
  const std::string sig = sign_bytes(a.priv, msg);
  ASSERT_EQ(sig.size(), 64u);
  EXPECT_EQ(sign_bytes(a.priv, msg), sig) << "Ed25519 is deterministic";
  EXPECT_TRUE(verify_signature(a.pub, msg, sig));
  EXPECT_FALSE(verify_signature(b.pub, msg, sig)) << "wrong public key accepted";
  EXPECT_TRUE(verify_signature(b.pub, msg, sign_bytes(b.priv, msg)));
  EXPECT_TRUE(verify_signature(a.pub, "", sign_bytes(a.priv, "")));
}

TEST(Signing, AnyTamperingFailsVerification) {
  const std::string dir = testing::make_temp_dir("sign");
  const Pair a = new_pair(dir, "a");
  const std::string msg = "the exact bytes of a manifest";
  const std::string sig = sign_bytes(a.priv, msg);
  for (size_t i = 0; i < msg.size(); ++i) {
    std::string m = msg;
    m[i] ^= 1;
    EXPECT_FALSE(verify_signature(a.pub, m, sig)) << "message byte " << i;
  }
  EXPECT_FALSE(verify_signature(a.pub, msg + "\n", sig));
  EXPECT_FALSE(verify_signature(a.pub, msg.substr(1), sig));
  for (size_t i = 0; i < sig.size(); ++i) {
    std::string s = sig;
    s[i] ^= 0x20;
    EXPECT_FALSE(verify_signature(a.pub, msg, s)) << "signature byte " << i;
  }
  EXPECT_FALSE(verify_signature(a.pub, msg, sig.substr(0, 63)));
  EXPECT_FALSE(verify_signature(a.pub, msg, sig + "x"));
  EXPECT_FALSE(verify_signature(a.pub, msg, ""));
}

TEST(Signing, BadKeyFilesAreNamedWithoutKeyMaterial) {
  const std::string dir = testing::make_temp_dir("sign");
  const Pair a = new_pair(dir, "a");
  expect_error([&] { sign_bytes(a.pub, "m"); }, {a.pub, "public key", "private key"});
  expect_error([&] { verify_signature(a.priv, "m", std::string(64, 'x')); },
               {a.priv, "private key", "public key"});
  try {
    verify_signature(a.priv, "m", std::string(64, 'x'));
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find(pem_body(a.priv)), std::string::npos) << e.what();
  }
  expect_error([&] { sign_bytes(dir + "/missing.pem", "m"); }, {dir + "/missing.pem"});
  const std::string junk = dir + "/junk.pem";
  std::ofstream(junk) << "not a key at all\n";
  expect_error([&] { sign_bytes(junk, "m"); }, {junk, "not a PEM private key"});
  expect_error([&] { verify_signature(junk, "m", "s"); }, {junk, "not a PEM public key"});

  // A valid PEM key of another type (EC P-256) is refused by name, not silently used.
  EVP_PKEY* ec = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  ASSERT_NE(ec, nullptr);
  BIO* bio = BIO_new(BIO_s_mem());
  ASSERT_EQ(PEM_write_bio_PrivateKey(bio, ec, nullptr, nullptr, 0, nullptr, nullptr), 1);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  const std::string ec_pem = dir + "/ec.pem";
  write_file_atomic(ec_pem, std::string(data, size_t(n)));
  BIO_free(bio);
  EVP_PKEY_free(ec);
  expect_error([&] { sign_bytes(ec_pem, "m"); }, {ec_pem, "Ed25519"});
  try {
    sign_bytes(ec_pem, "m");
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find(pem_body(ec_pem)), std::string::npos) << e.what();
  }
}

TEST(Signing, AesKeyFileIsHexMode0600AndNeverOverwritten) {
  const std::string dir = testing::make_temp_dir("sign");
  const std::string a = dir + "/a.key", b = dir + "/b.key";
  generate_aes_key_file(a);
  generate_aes_key_file(b);
  const std::string text = read_file(a);
  ASSERT_EQ(text.size(), 65u);
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(text.find_first_not_of("0123456789abcdef"), 64u);
  EXPECT_EQ(mode_of(a), 0600u);
  EXPECT_NE(text, read_file(b));
  expect_error([&] { generate_aes_key_file(a); }, {a, "already exists"});
  EXPECT_EQ(read_file(a), text);
}

TEST(Signing, Base64RoundTripAndStrictDecode) {
  std::string bytes;
  for (int n = 0; n < 70; ++n) {
    EXPECT_EQ(base64_decode(base64_encode(bytes)), bytes) << n;
    bytes.push_back(char(n * 37 + 11));
  }
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64_encode("fooba"), "Zm9vYmE=");
  EXPECT_EQ(base64_encode("foob"), "Zm9vYg==");
  EXPECT_EQ(base64_decode(" Zm9vYg==\n"), "foob");
  for (const char* bad : {"Zm9", "Zm9vY!==", "Zm=vYg==", "Zg==Zg==", "Z===", "Zm9v\nYg=="})
    expect_error([&] { base64_decode(bad); }, {"not base64"});
}

}  // namespace
}  // namespace ftune
