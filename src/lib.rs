//! vipd
