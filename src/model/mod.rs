//! Model description and forward pass.
