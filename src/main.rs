//! The `engine` binary: everything lives in the library; see `engine --help`.

/// mimalloc instead of glibc's malloc: a sync allocates and frees many small
/// JSON values per row, which spent about half the CPU in glibc's allocator
/// (BENCHMARKS.md, engine overhead).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    engine::cli::main().await
}
