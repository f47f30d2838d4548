//! The operator's `--audit-*` flags.

use std::net::SocketAddr;
use std::time::Duration;

use palisade_audit::Retention;

use super::{AuditMode, AuditSettings, DEFAULT_DATABASE};

#[derive(Clone, Debug, clap::Args)]
pub struct AuditArgs {
    /// The audit database: `sqlite:///PATH` (a file in WAL mode, created with its folder
    /// when missing), `postgres://USER:PASSWORD@HOST:PORT/DB`, or `none` (no audit log:
    /// decision batches are then not acknowledged and stay spooled on the nodes).
    #[arg(long, default_value = DEFAULT_DATABASE, value_name = "URL")]
    pub audit_database: String,

    /// Delete decisions last seen longer ago than this (`30m`, `12h`, `7d`; `0`: never).
    #[arg(long, default_value = "7d", value_parser = parse_age, value_name = "AGE")]
    pub audit_retention_age: MaxAge,

    /// Keep at most this many decision rows, deleting the oldest (`0`: no limit).
    #[arg(long, default_value_t = 10_000_000, value_name = "ROWS")]
    pub audit_retention_rows: u64,

    /// Keep the SQLite database under this size, deleting the oldest decisions (`10Gi`,
    /// `500Mi`, `2G` or bytes; `0`: no limit). SQLite only: size PostgreSQL with the rows.
    #[arg(long, default_value = "0", value_parser = parse_bytes, value_name = "SIZE")]
    pub audit_retention_bytes: u64,

    /// Rows deleted per statement by retention (small, so writes are never held up).
    #[arg(long, default_value_t = 5_000, value_name = "ROWS")]
    pub audit_retention_chunk: u32,

    /// How often retention runs, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub audit_retention_every_secs: u64,

    /// What policies without an audit setting of their own record: `all` decisions,
    /// `deny` only, or `none`.
    #[arg(long, default_value = "all", value_name = "all|deny|none")]
    pub audit_default: AuditMode,

    /// Serve the read-only query API (HTTPS with the stream's certificate) here; needs the
    /// Kubernetes source (callers are checked with TokenReview and SubjectAccessReview).
    #[arg(long, value_name = "ADDR")]
    pub audit_api_listen: Option<SocketAddr>,
}

impl AuditArgs {
    /// Settings that contradict each other, refused at start rather than ignored.
    pub fn check(&self) -> Result<(), String> {
        if self.audit_database == "none" {
            return Ok(());
        }
        // The same parse the store opens with: a mistyped URL is refused at start.
        let backend =
            palisade_audit::backend_of(&self.audit_database).map_err(|e| e.to_string())?;
        if backend == palisade_audit::Backend::Postgres && self.audit_retention_bytes > 0 {
            return Err(
                "--audit-retention-bytes needs SQLite: a PostgreSQL table does not \
                        shrink as rows are deleted; limit it with --audit-retention-rows"
                    .to_string(),
            );
        }
        Ok(())
    }

    pub fn settings(&self) -> AuditSettings {
        AuditSettings {
            database: (self.audit_database != "none").then(|| self.audit_database.clone()),
            retention: Retention {
                max_age_ms: self
                    .audit_retention_age
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                max_rows: (self.audit_retention_rows > 0).then_some(self.audit_retention_rows),
                max_bytes: (self.audit_retention_bytes > 0).then_some(self.audit_retention_bytes),
                chunk: self.audit_retention_chunk.max(1),
            },
            retention_every: Duration::from_secs(self.audit_retention_every_secs.max(1)),
            default_mode: self.audit_default,
            api_listen: self.audit_api_listen,
            ..AuditSettings::default()
        }
    }
}

/// A size: bytes, or a number with `K`/`M`/`G`/`T` (powers of 1000) or `Ki`/`Mi`/`Gi`/`Ti`
/// (powers of 1024), as Kubernetes quantities are written.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: a size is digits and an optional unit (10Gi, 500M)"))?;
    let factor: u64 = match unit {
        "" => 1,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (K, M, G, T, Ki, Mi, Gi, Ti)"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// A retention age, `None` for never. An alias, so that clap takes the parser's value as
/// the field's whole value (it treats a field spelled `Option<T>` as an optional `T`, and
/// panicked on the first parse).
pub type MaxAge = Option<Duration>;

/// `0` (never), or a number with a unit: `s`, `m`, `h`, `d`.
pub fn parse_age(text: &str) -> Result<Option<Duration>, String> {
    if text == "0" {
        return Ok(None);
    }
    let age = palisade_audit::parse_time(text, 0)
        .ok()
        .filter(|_| text.ends_with(['s', 'm', 'h', 'd']))
        .and_then(|t| u64::try_from(t.checked_neg()?).ok())
        .filter(|ms| *ms > 0)
        .ok_or_else(|| format!("{text:?}: expected 0 or an age such as 30m, 12h, 7d"))?;
    Ok(Some(Duration::from_millis(age)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1500"), Ok(1500));
        assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("10Gi"), Ok(10 << 30));
        assert_eq!(parse_bytes("500Mi"), Ok(500 << 20));
        for bad in ["", "Gi", "10GB", "-1", "1.5G", "99999999999Ti"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ages() {
        assert_eq!(parse_age("0"), Ok(None));
        assert_eq!(parse_age("7d"), Ok(Some(Duration::from_secs(7 * 86_400))));
        assert_eq!(parse_age("90s"), Ok(Some(Duration::from_secs(90))));
        for bad in ["", "7", "-1d", "0d", "1y"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_flags_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            audit: AuditArgs,
        }
        let defaults = Cli::try_parse_from(["operator"]).expect("defaults parse");
        assert_eq!(
            defaults.audit.audit_retention_age,
            Some(Duration::from_secs(7 * 86_400))
        );
        let never =
            Cli::try_parse_from(["operator", "--audit-retention-age", "0"]).expect("0 parses");
        assert_eq!(never.audit.audit_retention_age, None);
        assert!(Cli::try_parse_from(["operator", "--audit-retention-age", "7"]).is_err());
        assert_eq!(defaults.audit.settings().retention.max_bytes, None);
        let sized = Cli::try_parse_from(["operator", "--audit-retention-bytes", "1Gi"])
            .expect("size parses");
        assert_eq!(sized.audit.settings().retention.max_bytes, Some(1 << 30));
        assert_eq!(sized.audit.check(), Ok(()));
        let pg = Cli::try_parse_from([
            "operator",
            "--audit-database",
            "postgres://u@db/palisade",
            "--audit-retention-bytes",
            "1Gi",
        ])
        .expect("parses");
        assert!(pg.audit.check().is_err(), "bytes refused with PostgreSQL");
        let parse = |db: &str| {
            Cli::try_parse_from(["operator", "--audit-database", db])
                .expect("parses")
                .audit
                .check()
        };
        for good in [
            "none",
            "sqlite:///var/lib/palisade/audit.db",
            "postgresql://u@db/p",
        ] {
            assert_eq!(parse(good), Ok(()), "{good}");
        }
        // A mistyped scheme is refused at start, not retried forever by the ingest.
        for bad in ["mysql://u@db/p", "/var/lib/audit.db", "sqlite3:///x.db"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("expected sqlite://PATH"), "{bad}: {err}");
        }
    }
}
