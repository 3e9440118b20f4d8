//! One module per subcommand.

pub mod bench;
pub mod bench_threads;
pub mod countdown;
pub mod data;
pub mod model_args;
pub mod run;
pub mod threads;
