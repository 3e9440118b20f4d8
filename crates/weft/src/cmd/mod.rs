//! One module per subcommand.

pub mod countdown;
pub mod data;
