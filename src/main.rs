//! The `engine` binary: everything lives in the library; see `engine --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    engine::cli::main().await
}
