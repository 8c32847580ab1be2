//! The ops the model needs, implemented per device. `cpu` runs everywhere; `cuda` loads the
//! driver at run time.

pub mod cpu;
pub mod cuda;
