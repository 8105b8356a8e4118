//! Log output of the binaries: human-readable text, one JSON object per
//! event, or the systemd journal (`[log] format`), filtered by `RUST_LOG`.
//!
//! Events carry structured fields (`group`, `image`, `epoch`, `peer`, and in
//! JSON the fields of the enclosing spans), and an error with its causes
//! on one line ([`error_chain`]). Secrets — API tokens, service-key
//! secrets, private keys — are never passed to `tracing`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Sets up logging (stderr, or the journal): `RUST_LOG` wins, else
/// `default_level`. With `journald` and no journal socket (not started by
/// systemd), falls back to text on stderr and says so.
pub fn init_logging(default_level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry.with(text()).try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journal) => registry
                .with(journal.with_syslog_identifier("ferry-agent".to_owned()))
                .try_init(),
            Err(error) => {
                let r = registry.with(text()).try_init();
                tracing::warn!(%error, "log format journald: no journal socket; logging text to stderr");
                r
            }
        },
    };
}

/// The error and its causes on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        cur = s.source();
    }
    text
}
