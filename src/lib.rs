//! vipd

pub mod ipvs;
