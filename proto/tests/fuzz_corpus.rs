//! Replays the committed fuzz corpus (fuzz/corpus/frame) and a few thousand deterministic
//! mutations of it through the frame fuzz target's body, on stable Rust. `scripts/fuzz` runs
//! the real coverage-guided fuzzer; this keeps every input it ever found interesting (and the
//! seeds) as a regression test in the ordinary test run.

use std::path::Path;

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frame");
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.expect("entry").path()).expect("read"))
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn corpus_and_mutations_never_panic() {
    let inputs = corpus();
    assert!(inputs.len() >= 10, "the seed corpus is missing");
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for input in &inputs {
        secretd_proto::fuzzing::frame(input);
        for _ in 0..300 {
            let mut m = input.clone();
            match next() % 4 {
                0 if !m.is_empty() => {
                    let i = (next() as usize) % m.len();
                    m[i] ^= 1 << (next() % 8);
                }
                1 if !m.is_empty() => m.truncate((next() as usize) % m.len()),
                2 => m.extend((0..next() % 16).map(|_| next() as u8)),
                _ if m.len() >= 12 => {
                    // Overwrite a u64 somewhere with a huge length.
                    let i = (next() as usize) % (m.len() - 8);
                    m[i..i + 8].copy_from_slice(&(next() | 1 << 40).to_le_bytes());
                }
                _ => {}
            }
            secretd_proto::fuzzing::frame(&m);
        }
    }
}

/// Regenerates the seed corpus: `cargo test -p secretd-proto --test fuzz_corpus -- --ignored`.
/// Every request and response kind, as a whole frame and as a bare body.
#[test]
#[ignore]
fn write_seed_corpus() {
    use secretd_proto::frame::encode_frame;
    use secretd_proto::*;
    let requests = vec![
        Request::Hello(ClientHello::new("seed/1")),
        Request::Get {
            name: "trading_api_key".into(),
        },
        Request::Status,
        Request::Refresh { name: None },
        Request::Rotation {
            name: "k".into(),
            step: RotationStep::Begin {
                version: "7".into(),
            },
        },
        Request::AuditTail {
            limit: 20,
            secret: Some("k".into()),
        },
        Request::AuditVerify,
        Request::BreakGlassApply {
            envelope: b"SBG1 not really an envelope".to_vec(),
        },
        Request::BreakGlassClear { name: "k".into() },
        Request::Metrics,
        Request::Watch {
            names: vec!["a".into(), "b".into()],
        },
    ];
    let responses = vec![
        Response::Secret(SecretReply {
            version: "3".into(),
            source: SourceKind::Gsm,
            fetched_at_ms: 1,
            expires_at_ms: 2,
            value: SecretValue::Borrowed(b"seed-value"),
        }),
        Response::Error(WireError::new(ErrorCode::NotFound, "no")),
        Response::Watching(vec!["a".into()]),
        Response::Event(ChangeEvent::Lagged),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frame");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut frames = Vec::new();
    for r in &requests {
        let mut f = Vec::new();
        encode_frame(r, &mut f).expect("encode");
        frames.push(f);
    }
    for r in &responses {
        let mut f = Vec::new();
        encode_frame(r, &mut f).expect("encode");
        frames.push(f);
    }
    for (i, f) in frames.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-frame-{i:02}")), f).expect("write");
        std::fs::write(dir.join(format!("seed-body-{i:02}")), &f[4..]).expect("write");
    }
}
