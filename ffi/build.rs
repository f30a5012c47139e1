// Give the shared library a SONAME so programs linked against it record `libsecretd.so.0`
// (the C ABI's major version), not a build-tree path.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libsecretd.so.0");
}
