//! The two things the credential provider asks systemd over D-Bus: restart a unit
//! (`TryRestartUnit`), and which running units load a credential from our socket (for units
//! that loaded before this daemon started, which it has not seen).

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// A unit as `ListUnitsByPatterns` describes it.
type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// The system bus, connected on first use and again after a failure.
#[derive(Debug, Default)]
pub(super) struct Bus {
    /// The connection, once made.
    conn: tokio::sync::Mutex<Option<zbus::Connection>>,
}

impl Bus {
    async fn connection(&self) -> zbus::Result<zbus::Connection> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let c = zbus::Connection::system().await?;
        *conn = Some(c.clone());
        Ok(c)
    }

    async fn forget_on_error<T>(&self, r: zbus::Result<T>) -> zbus::Result<T> {
        if r.is_err() {
            *self.conn.lock().await = None;
        }
        r
    }

    /// `TryRestartUnit(unit, "replace")`: a stopped unit stays stopped.
    pub(super) async fn try_restart(&self, unit: &str) -> zbus::Result<()> {
        let conn = self.connection().await?;
        let called = conn
            .call_method(
                Some(SYSTEMD),
                MANAGER_PATH,
                Some(MANAGER),
                "TryRestartUnit",
                &(unit, "replace"),
            )
            .await
            .map(drop);
        self.forget_on_error(called).await
    }

    /// The running units matching `patterns` whose `LoadCredential=` loads `id` from `socket`.
    pub(super) async fn units_loading(
        &self,
        patterns: &[&str],
        id: &str,
        socket: &str,
    ) -> zbus::Result<Vec<String>> {
        let conn = self.connection().await?;
        let listed = conn
            .call_method(
                Some(SYSTEMD),
                MANAGER_PATH,
                Some(MANAGER),
                "ListUnitsByPatterns",
                &(["active", "activating", "reloading"].as_slice(), patterns),
            )
            .await;
        let units: Vec<UnitRow> = self.forget_on_error(listed).await?.body().deserialize()?;
        let mut loading = Vec::new();
        for (name, .., path, _, _, _) in units {
            match load_credentials(&conn, &path).await {
                Ok(credentials) if credentials.iter().any(|(i, s)| i == id && s == socket) => {
                    loading.push(name);
                }
                Ok(_) => {}
                // Gone between the list and the look (stopped, unloaded): nothing to restart.
                Err(e) => tracing::debug!(unit = %name, error = %e, "cannot read LoadCredential="),
            }
        }
        Ok(loading)
    }
}

/// A service's `LoadCredential=` entries: (id, path).
async fn load_credentials(
    conn: &zbus::Connection,
    unit: &OwnedObjectPath,
) -> zbus::Result<Vec<(String, String)>> {
    let got = conn
        .call_method(
            Some(SYSTEMD),
            unit.as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.freedesktop.systemd1.Service", "LoadCredential"),
        )
        .await?;
    let value: OwnedValue = got.body().deserialize()?;
    Ok(value.try_into()?)
}
