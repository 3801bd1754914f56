//! One log setup for every binary: `tracing` to stderr, filtered by
//! `RUST_LOG`, as text or JSON, and a panic hook that logs through `tracing`
//! so that a panic lands in the same stream, in the same format, as every
//! other line (a JSON log pipeline would otherwise drop it as garbage).

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The variable that picks the format where there is no flag for it.
pub const LOG_FORMAT_ENV: &str = "SQUALL_LOG_FORMAT";

impl LogFormat {
    /// From `SQUALL_LOG_FORMAT` (`json` or anything else for text).
    pub fn from_env() -> Self {
        match std::env::var(LOG_FORMAT_ENV) {
            Ok(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// Install the subscriber and the panic hook. `default_filter` applies when
/// `RUST_LOG` is unset. A second call keeps the first subscriber.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colours only for a person at a terminal: container logs, files and pipes
    // get plain text (and `NO_COLOR` turns them off anywhere).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder.json().try_init().is_ok(),
        LogFormat::Text => builder.try_init().is_ok(),
    };
    if installed {
        std::panic::set_hook(Box::new(log_panic));
    }
}

/// The message of a panic's payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let message = panic_message(info.payload()).unwrap_or("(no message)");
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    // Captured only when RUST_BACKTRACE asks for it, as the default hook does.
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        tracing::error!(target: "panic", %backtrace, "thread '{thread}' panicked at {location}: {message}");
    } else {
        tracing::error!(target: "panic", "thread '{thread}' panicked at {location}: {message}");
    }
}
