//! tickship's wire side: the replication protocol (messages, framing, sessions) and its QUIC
//! transport. No disk. The protocol arrives with the replication work; this crate holds its
//! place in the workspace so that the layout of DESIGN.md stands from the start.
