//! Token + position embedding.

use rayon::prelude::*;

/// out(B,T,C) = wte(Vp,C)[tokens(B,T)] + wpe(maxT,C)[t].
pub fn encoder_forward(out: &mut [f32], wte: &[f32], wpe: &[f32], tokens: &[u32], t: usize, c: usize) {
    out.par_chunks_mut(c).enumerate().for_each(|(row, o)| {
        // seek to wte[tokens[b,t]] and wpe[t]
        let tok = tokens[row] as usize;
        let we = &wte[tok * c..(tok + 1) * c];
        let pe = &wpe[(row % t) * c..(row % t + 1) * c];
        for ((o, &w), &p) in o.iter_mut().zip(we).zip(pe) {
            *o = w + p;
        }
    });
}

/// dwte[tokens] += dout, dwpe[t] += dout. Serial over rows, so tokens that repeat accumulate in
/// a fixed order (deterministic); parallel over channel blocks.
pub fn encoder_backward(dwte: &mut [f32], dwpe: &mut [f32], dout: &[f32], tokens: &[u32], t: usize, c: usize) {
    for (row, d) in dout.chunks_exact(c).enumerate() {
        let tok = tokens[row] as usize;
        let tp = row % t;
        for (w, &g) in dwte[tok * c..(tok + 1) * c].iter_mut().zip(d) {
            *w += g;
        }
        for (w, &g) in dwpe[tp * c..(tp + 1) * c].iter_mut().zip(d) {
            *w += g;
        }
    }
}
