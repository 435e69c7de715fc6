#include <cstdio>
int main() { std::puts("ftune"); return 0; }
