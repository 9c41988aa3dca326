//! Integration tests of the pipeline, on real weights and the real SmolLM2 model.
//!
//! One binary (it links mistral.rs through `rapport-generate`; see the workspace notes).

mod support;

// The shipped personas load, validate and keep their secrets out of every locked prompt.
mod personas;
// Guard thresholds measured on the labelled probes in datasets/guards/.
mod guards;
// Whole turns with the real model: streaming, retries, fallback, the secret game.
mod turns;
// The secret game cannot be farmed and stays winnable (the engine with canned replies).
mod secret_game;
// The substance signal: does a message answer the question? Tuned and measured on held-out data.
mod answers;
