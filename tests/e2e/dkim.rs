//! DKIM: the signature of a sent email is checked by an independent verifier (Python's `dkimpy`,
//! given the DNS record a site would publish), for an RSA and an Ed25519 key; a changed subject
//! fails the same check.

use std::process::{Command, Stdio};

use base64::Engine as _;
use resetmail_shared::db::users::UserStatus;
use resetmail_testkit::{PATIENCE, broker::TestBroker, db::TestDb, smtp_sink::SmtpSink};
use uuid::Uuid;

use crate::harness::{TestWorker, job_for, publish, worker_config};

/// A key file of the test's own, removed afterwards, and the TXT record that publishes its public half.
struct Key {
    path: std::path::PathBuf,
    record: String,
}

impl Drop for Key {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn run(program: &str, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write as _;
        stdin.write_all(input).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A 2048-bit RSA key as PKCS#1 PEM, made by OpenSSL.
fn rsa_key() -> Key {
    let path = std::env::temp_dir().join(format!("resetmail-dkim-{}.pem", Uuid::new_v4()));
    let file = path.to_string_lossy().into_owned();
    run(
        "openssl",
        &["genrsa", "-traditional", "-out", &file, "2048"],
        None,
    );
    let public = run(
        "openssl",
        &["rsa", "-in", &file, "-pubout", "-outform", "DER"],
        None,
    );
    Key {
        record: format!(
            "v=DKIM1; k=rsa; p={}",
            base64::prelude::BASE64_STANDARD.encode(public)
        ),
        path,
    }
}

/// An Ed25519 seed in base64, its public key derived by PyNaCl.
fn ed25519_key() -> Key {
    let seed: Vec<u8> = [Uuid::new_v4().into_bytes(), Uuid::new_v4().into_bytes()].concat();
    let encoded = base64::prelude::BASE64_STANDARD.encode(&seed);
    let path = std::env::temp_dir().join(format!("resetmail-dkim-{}.key", Uuid::new_v4()));
    std::fs::write(&path, &encoded).unwrap();
    let public = run(
        "python3",
        &[
            "-c",
            "import base64, sys, nacl.signing; \
             seed = base64.b64decode(sys.stdin.read()); \
             print(base64.b64encode(bytes(nacl.signing.SigningKey(seed).verify_key)).decode())",
        ],
        Some(encoded.as_bytes()),
    );
    Key {
        record: format!(
            "v=DKIM1; k=ed25519; p={}",
            String::from_utf8_lossy(&public).trim()
        ),
        path,
    }
}

/// Whether dkimpy accepts the message's signature when `name` publishes `record`.
fn dkimpy_accepts(message: &str, name: &str, record: &str) -> bool {
    let script = "import os, sys, dkim\n\
                  name = os.environ['DKIM_NAME'].encode()\n\
                  record = os.environ['DKIM_RECORD'].encode()\n\
                  def dns(query, timeout=5):\n\
                  \x20   return record if query.rstrip(b'.') == name else None\n\
                  sys.stdout.write('pass' if dkim.verify(sys.stdin.buffer.read(), dnsfunc=dns) else 'fail')\n";
    let crlf = message.replace("\r\n", "\n").replace('\n', "\r\n");
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("DKIM_NAME", name)
        .env("DKIM_RECORD", record)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run python3: {error}"));
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin.write_all(crlf.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let verdict = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        verdict == "pass" || verdict == "fail",
        "dkimpy did not run (install it: python3 -m pip install dkimpy pynacl): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    verdict == "pass"
}

async fn signed_email_verifies(key: Key) {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    db.add_user("jane@example.com", Some("Jane"), None, UserStatus::Active)
        .await;
    let file = key.path.to_string_lossy().into_owned();
    let worker = TestWorker::start(worker_config(
        &db.config,
        &broker.config,
        &sink,
        &["--dkim-key-file", &file, "--dkim-selector", "reset2026"],
    ));
    publish(&broker, &job_for("jane@example.com")).await;
    let mails = sink.wait_for(1, PATIENCE).await;
    worker.stop().await;

    let message = &mails[0].data;
    let header = mails[0]
        .parsed()
        .header("DKIM-Signature")
        .unwrap_or_default()
        .to_owned();
    assert!(
        header.contains("d=cloud.example.com") && header.contains("s=reset2026"),
        "{header}"
    );
    let name = "reset2026._domainkey.cloud.example.com";
    assert!(
        dkimpy_accepts(message, name, &key.record),
        "the signature does not verify:\n{message}"
    );
    let tampered = message.replacen("Subject: ", "Subject: Re: ", 1);
    assert!(
        !dkimpy_accepts(&tampered, name, &key.record),
        "a changed subject still verifies: the check proves nothing"
    );
}

#[tokio::test]
async fn an_rsa_signature_verifies_with_an_independent_verifier() {
    signed_email_verifies(rsa_key()).await;
}

#[tokio::test]
async fn an_ed25519_signature_verifies_with_an_independent_verifier() {
    signed_email_verifies(ed25519_key()).await;
}
