//! Real Google credentials for the tests: a service-account key file (made once per test
//! process with `secretd keygen`), which the daemon signs its own JWTs with, and a fake GSM
//! told to require them. GSM tests run this way, so the path a production host takes is the
//! path the tests take.

use std::sync::OnceLock;

use secretd_gsm_fake::FakeGsm;

use super::{TestEnv, cli};

/// The test service account.
pub(crate) const SA_EMAIL: &str = "secretd-tests@apex-test.iam.gserviceaccount.com";
/// Its key id.
pub(crate) const SA_KID: &str = "secretd-tests-key-1";

/// The key pair the GSM tests share (PKCS#8 private PEM, SPKI public PEM), made on first use.
fn key_pair() -> &'static (String, String) {
    static PAIR: OnceLock<(String, String)> = OnceLock::new();
    PAIR.get_or_init(new_key_pair)
}

/// A new RSA key pair from `secretd keygen` (PKCS#8 private PEM, SPKI public PEM).
pub(crate) fn new_key_pair() -> (String, String) {
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let (private, public) = (dir.path().join("sa.pem"), dir.path().join("sa.pub.pem"));
        let out = cli(
            &[
                "keygen",
                "--out-private",
                private.to_str().expect("utf8"),
                "--out-public",
                public.to_str().expect("utf8"),
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            std::fs::read_to_string(private).expect("private key"),
            std::fs::read_to_string(public).expect("public key"),
        )
    }
}

/// Writes the service-account key file into `env`, makes `fake` require tokens and trust the
/// key, and returns the file's path.
pub(crate) fn service_account(env: &TestEnv, fake: &FakeGsm) -> String {
    let (private, public) = key_pair();
    fake.require_auth();
    fake.trust_service_account(SA_EMAIL, SA_KID, public)
        .expect("trust the test key");
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "apex-test",
        "private_key_id": SA_KID,
        "private_key": private,
        "client_email": SA_EMAIL,
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let path = env.path("service-account.json");
    std::fs::write(&path, key.to_string()).expect("key file");
    path.to_str().expect("utf8").to_owned()
}
