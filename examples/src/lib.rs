//! Runnable FogConnect programs; see the `examples` of this package.

pub mod chaos;
pub mod scenario;
