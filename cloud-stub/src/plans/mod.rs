//! The plan catalog and its migration rules ([`catalog`]): parsed, validated over
//! every plan pair, and decided as a table. Pure.

pub mod catalog;
