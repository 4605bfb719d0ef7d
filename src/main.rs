fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cfg = spyglass::config::parse_args(std::env::args().collect());
    tokio::runtime::Runtime::new()?.block_on(spyglass::daemon::run(cfg))
}
