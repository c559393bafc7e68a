//! tansu's command line (`broker`, `topic`, `user`, ...), unchanged; this crate only adds SASL/PLAIN.
use tansu_broker::{otel, TracingFormat};
use tansu_cli::{Cli, Result};
use tansu_sans_io::ErrorCode;

#[tokio::main]
async fn main() -> Result<ErrorCode> {
    let _guard = otel::init(TracingFormat::Text)?;
    Cli::main().await
}
