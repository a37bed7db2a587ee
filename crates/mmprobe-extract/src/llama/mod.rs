//! The Llama decoder (transformers' `LlamaModel`), a module MLLM families
//! compose: they build the input embeddings, it runs the layers.

pub mod config;
pub mod model;

pub use config::{LlamaConfig, RopeParameters};
pub use model::{LlamaAttention, LlamaDecoderLayer, LlamaMlp, LlamaModel, Rotary};
