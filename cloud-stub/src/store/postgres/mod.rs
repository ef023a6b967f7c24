//! The PostgreSQL backend (to come in the next commit).
