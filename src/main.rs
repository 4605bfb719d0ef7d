//! The `spyglass` binary: reads the command line and hands over to the daemon, the headless
//! viewer or the device listing.

use std::process::ExitCode;

use spyglass::config::{self, Command};

fn main() -> ExitCode {
    let command = config::load(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let log = match &command {
        Command::Daemon(cfg) | Command::HomeAssistantRemove(cfg) => cfg.log.clone(),
        _ => None,
    };
    let log = log.or_else(|| std::env::var("RUST_LOG").ok());
    spyglass::logging::init(log.as_deref());

    match command {
        Command::Devices => {
            print!("{}", spyglass::video::v4l2::list_devices());
            print!("{}", spyglass::video::encode::v4l2::list_encoders());
            print!("{}", spyglass::audio::list_devices());
            ExitCode::SUCCESS
        }
        Command::Daemon(cfg) => {
            match runtime().and_then(|rt| rt.block_on(spyglass::daemon::run(cfg))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("spyglass: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::View(cfg) => {
            let wanted = u64::from(cfg.frames);
            let json = cfg.json;
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(err) => {
                    eprintln!("spyglass view: {err:#}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(spyglass::view::run(
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
        Command::HomeAssistantRemove(cfg) => {
            match runtime().and_then(|rt| rt.block_on(spyglass::homeassistant::remove(cfg))) {
                Ok(removed) => {
                    println!("{removed}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("spyglass homeassistant: {err:#}");
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(spyglass::daemon::MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("starting the async runtime")
}
