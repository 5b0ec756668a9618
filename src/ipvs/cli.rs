//! `vipd ipvs` subcommands.
