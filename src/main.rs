//! The `spyglass` binary: reads the command line and hands over to the daemon, the headless
//! viewer or the device listing.

use std::process::ExitCode;

use spyglass::config::{self, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let command = config::load(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let log = match &command {
        Command::Daemon(cfg) => cfg.log.clone(),
        _ => None,
    };
    let filter = log
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    match command {
        Command::Devices => {
            print!("{}", spyglass::video::v4l2::list_devices());
            print!("{}", spyglass::audio::list_devices());
            ExitCode::SUCCESS
        }
        Command::Daemon(cfg) => match runtime().block_on(spyglass::daemon::run(cfg)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("spyglass: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::View(cfg) => {
            let wanted = u64::from(cfg.frames);
            let json = cfg.json;
            match runtime().block_on(spyglass::view::run(
                spyglass::view::ViewOptions::from_config(&cfg),
            )) {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string(&report).unwrap_or_default());
                    } else {
                        print!("{report}");
                    }
                    if report.frames >= wanted {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(err) => {
                    eprintln!("spyglass view: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Selftest(cfg) => match spyglass::selftest::run(&cfg) {
            Ok(report) => {
                if cfg.json {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                } else {
                    print!("{report}");
                }
                if report.passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(err) => {
                eprintln!("spyglass selftest: {err}");
                ExitCode::FAILURE
            }
        },
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(spyglass::daemon::MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .expect("starting the async runtime")
}
