//! Pod attachment through CNI: the protocol types shared with the `bridgenet` plugin binary,
//! the pod annotation, the agent's socket server and the logic behind each CNI command.

pub mod annotation;
pub mod engine;
pub mod install;
pub mod server;
pub mod types;
