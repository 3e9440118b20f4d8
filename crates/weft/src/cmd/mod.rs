//! One module per subcommand.

pub mod bench;
pub mod bench_serve;
pub mod bench_threads;
pub mod bench_train;
pub mod countdown;
pub mod countdown_run;
pub mod data;
pub mod eval;
pub mod model_args;
pub mod run;
pub mod serve;
pub mod solve;
pub mod threads;
pub mod train;
