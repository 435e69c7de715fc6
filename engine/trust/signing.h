// Ed25519 signatures (OpenSSL) for provenance manifests, and the key files `ftune keygen` makes.
// Keys are unencrypted PEM, interchangeable with the openssl tool: the private key is PKCS#8
// ("BEGIN PRIVATE KEY", as `openssl genpkey -algorithm ed25519` writes it), the public key
// SubjectPublicKeyInfo ("BEGIN PUBLIC KEY", as `openssl pkey -pubout` writes it).
// Errors are ftune::Error naming the file; key bytes never appear in a message.
#pragma once
#include <string>
#include <string_view>

namespace ftune {

// Writes a fresh key pair: private_pem with mode 0600, public_pem with 0644, each atomically.
// Refuses (ftune::Error) when either file already exists, before writing anything.
void generate_signing_keypair(const std::string& private_pem, const std::string& public_pem);

// The 64-byte raw Ed25519 signature of msg under the private key in private_pem_path.
std::string sign_bytes(const std::string& private_pem_path, std::string_view msg);

// True when sig (64 raw bytes) is a valid signature of msg under the public key in
// public_pem_path. A bad signature is false; an unreadable or non-Ed25519 key file throws.
bool verify_signature(const std::string& public_pem_path, std::string_view msg,
                      const std::string& sig);

// Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo of the key in pem_path (a private or a
// public Ed25519 PEM): the same value for both halves of a pair, so it names the key without
// revealing it. Equals `openssl pkey -pubout -outform DER | sha256sum`.
std::string public_key_sha256(const std::string& pem_path);

// Writes 32 random bytes (OpenSSL RAND_bytes) as 64 lowercase hex characters and a newline,
// mode 0600, atomically; refuses to overwrite. The AES-256 key file format of `ftune keygen
// --encrypt`.
void generate_aes_key_file(const std::string& path);

// Standard base64 with padding (RFC 4648), no line breaks. decode throws ftune::Error on
// anything that is not canonical base64 (whitespace around it is ignored).
std::string base64_encode(std::string_view bytes);
std::string base64_decode(std::string_view text);

}  // namespace ftune
