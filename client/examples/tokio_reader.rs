//! A tokio program that reads a key, then follows its rotations: the README's tokio example,
//! run end to end by `tests/tests/async_client.rs`.
//!
//! `cargo run -p secretd-client --features tokio --example tokio_reader -- trading_api_key`
//! (the socket comes from `$SECRETD_SOCKET` or the default path). Prints one line per value
//! it holds (never the value) and stops after `$CHANGES` changes (default 1).

use std::error::Error;

use futures::StreamExt;
use secretd_client::{AsyncClient, ChangeEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "trading_api_key".into());
    let changes: usize = std::env::var("CHANGES").map_or(Ok(1), |n| n.parse())?;
    let client = AsyncClient::connect_default().await?.with_cache().await?;
    // Subscribe first, then read: a rotation between the two is then an event, not a gap.
    let mut events = client.watch([name.as_str()]).await?;
    let key = client.get(&name).await?;
    println!("{name}: version {} from {}", key.version(), key.source());

    let mut seen = 0;
    while seen < changes {
        match events.next().await {
            Some(Ok(ChangeEvent::Changed(c))) => {
                let key = client.get(&c.name).await?; // events never carry values
                println!(
                    "{}: version {} from {}",
                    c.name,
                    key.version(),
                    key.source()
                );
                seen += 1;
            }
            // Changes may have been missed (the daemon restarted): re-read.
            Some(Ok(ChangeEvent::Lagged)) => {
                let key = client.get(&name).await?;
                println!("{name}: version {} (after a gap)", key.version());
            }
            // GSM's rotation schedule asks for a new version: nothing served changed.
            Some(Ok(ChangeEvent::RotationRequested(r))) => {
                println!("{}: a rotation is due", r.name);
            }
            Some(Err(e)) => eprintln!("watch: {e} (resubscribing)"),
            None => break,
        }
    }
    Ok(())
}
