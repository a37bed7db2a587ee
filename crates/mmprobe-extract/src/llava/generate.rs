//! What a LLaVA says: greedy continuations of prompts, and the log-probability
//! it gives a known answer. Each decoder pass takes its [`Capture`] from a
//! hook that sees the ids and mask of that pass, so an intervention can pick
//! its positions (the image tokens, the last token) as the sequence grows.

use tch::{Kind, Tensor};

use super::model::LlavaModel;
use crate::capture::Capture;

/// Builds the decoder's capture for one pass over `input_ids`, `attention_mask` [B, T].
pub type DecoderHook<'a> = dyn FnMut(&Tensor, &Tensor) -> Capture + 'a;

/// Greedy continuations of left-padded prompts, each up to (not including)
/// the first of the `eos` ids and at most `max_new` tokens. `image` holds the projected features
/// ([`LlavaModel::encode_image`]). The image token is never emitted: it would
/// be taken for a placeholder on the next pass.
pub fn greedy(
    model: &LlavaModel,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    image: &Tensor,
    eos: &[i64],
    max_new: usize,
    hook: &mut DecoderHook,
) -> crate::Result<Vec<Vec<i64>>> {
    let b = input_ids.size()[0] as usize;
    let (mut ids, mut mask) = (input_ids.shallow_clone(), attention_mask.shallow_clone());
    let mut out: Vec<Vec<i64>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for _ in 0..max_new {
        let next = tch::no_grad(|| {
            let h = model.decode(&ids, &mask, Some(image), &mut hook(&ids, &mask));
            let t = h.size()[1];
            // Left padding: every row's last token is at the end.
            let logits = model.logits(&h.narrow(1, t - 1, 1));
            let image_token = model.config.image_token_index;
            if (0..logits.size()[2]).contains(&image_token) {
                let _ = logits.narrow(-1, image_token, 1).fill_(f64::NEG_INFINITY);
            }
            logits.argmax(-1, false)
        });
        let picked = Vec::<i64>::try_from(next.flatten(0, -1).to_device(tch::Device::Cpu))?;
        for (i, &id) in picked.iter().enumerate() {
            if !done[i] {
                if eos.contains(&id) { done[i] = true } else { out[i].push(id) }
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        ids = Tensor::cat(&[ids, next.to_kind(Kind::Int64)], 1);
        mask = Tensor::cat(&[&mask, &mask.ones_like().narrow(1, 0, 1)], 1);
    }
    Ok(out)
}

/// Per row, the summed log-probability of the tokens where `scored` [B, T]
/// is true, each predicted from the tokens before it (teacher forcing).
pub fn scored_log_prob(
    model: &LlavaModel,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    image: &Tensor,
    scored: &Tensor,
    hook: &mut DecoderHook,
) -> crate::Result<Vec<f64>> {
    let sums = tch::no_grad(|| {
        let h = model.decode(input_ids, attention_mask, Some(image), &mut hook(input_ids, attention_mask));
        let t = h.size()[1];
        let logp = model.logits(&h.narrow(1, 0, t - 1)).to_kind(Kind::Float).log_softmax(-1, Kind::Float);
        let next = input_ids.narrow(1, 1, t - 1);
        // The image token may lie outside the vocabulary; such positions are never scored.
        let v = logp.size()[2];
        let safe = next.clamp(0, v - 1);
        let picked = logp.gather(-1, &safe.unsqueeze(-1), false).squeeze_dim(-1);
        let keep = scored.narrow(1, 1, t - 1).to_kind(Kind::Float);
        (picked * keep).sum_dim_intlist([1i64].as_slice(), false, Kind::Double).to_device(tch::Device::Cpu)
    });
    Ok(Vec::<f64>::try_from(sums)?)
}
