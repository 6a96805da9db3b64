//! ZeRO-1 (DeepSpeed's stage 1, llm.c's `-z 1`; `zero_stage = 1`): the optimiser state is
//! split over the ranks instead of copied on each. Rank r owns a contiguous run of the
//! parameter buffer's pieces ([`crate::model::ParamLayout::pieces`]: runs of rows of at most
//! about a million elements, such as a layer of a large stacked tensor): it alone keeps their AdamW moments (and, under
//! mixed precision, their f32 master weights), it alone needs their summed gradients, and it
//! alone updates them, then gives every rank the new values. Per parameter a rank holds 8 (or
//! 12) bytes of state for its pieces only, so the state shrinks by the world size, to within a
//! piece.
//!
//! Whole pieces, not equal slices of the flat buffer: the global gradient norm is a sum of
//! per-piece sums of squares in layout order, in every run, and with whole pieces each one is
//! computed by its owner exactly as one process computes it, so a sharded run takes the same
//! steps and writes the same checkpoints as an unsharded one (bitwise where the gradients are
//! summed in the same order).

use crate::backend::Span;
use std::ops::Range;

/// The pieces `0..lens.len()` (element counts, in layout order) split into `ranks` contiguous
/// runs, the largest run as small as whole pieces allow; trailing runs may be empty (more ranks
/// than the split can use).
pub fn split(lens: &[usize], ranks: usize) -> Vec<Range<usize>> {
    assert!(ranks > 0);
    // the runs a greedy fill makes under a cap: as few as the cap allows
    let fill = |cap: usize| -> Vec<Range<usize>> {
        let (mut runs, mut start, mut load) = (Vec::new(), 0, 0);
        for (i, &n) in lens.iter().enumerate() {
            if load + n > cap && i > start {
                runs.push(start..i);
                (start, load) = (i, 0);
            }
            load += n;
        }
        runs.push(start..lens.len());
        runs
    };
    // the smallest cap whose greedy fill needs at most `ranks` runs (feasibility is monotone in
    // the cap, and greedy is optimal for contiguous runs)
    let (mut lo, mut hi) = (lens.iter().copied().max().unwrap_or(0), lens.iter().sum::<usize>());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fill(mid).len() <= ranks {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut runs = fill(lo);
    let end = lens.len();
    runs.resize(ranks, end..end);
    runs
}

/// [`split`] as spans of the flat parameter buffer: rank r's `parts[r]`, consecutive from 0 to
/// the buffer's end. `spans`: the tensors' spans, in layout order and back to back.
pub fn parts(spans: &[Span], ranks: usize) -> Vec<Span> {
    let lens: Vec<usize> = spans.iter().map(|s| s.len).collect();
    let total = spans.last().map_or(0, Span::end);
    split(&lens, ranks)
        .into_iter()
        .map(|r| match (spans.get(r.start), r.is_empty()) {
            (Some(first), false) => Span::new(first.off, spans[r.end - 1].end() - first.off),
            _ => Span::new(total, 0),
        })
        .collect()
}

/// The largest of [`parts`] of `layout`'s pieces over `ranks` (elements): the rank that holds
/// the most optimiser state, which sets what a ZeRO-1 run needs per device.
pub fn largest_part(layout: &crate::model::ParamLayout, ranks: usize) -> usize {
    parts(&layout.pieces(), ranks).iter().map(|p| p.len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_contiguous_cover_every_tensor_and_balance_the_largest() {
        // GPT-2 124M's layout in millions of elements, roughly: wte, wpe, ln1w, ln1b, qkvw, ...
        let gpt2 = [
            38_597_376, 786_432, 9216, 9216, 21_233_664, 27_648, 7_077_888, 9216, 9216, 9216, 28_311_552, 36_864, 28_311_552, 9216, 768,
            768,
        ];
        for ranks in 1..10 {
            let runs = split(&gpt2, ranks);
            assert_eq!(runs.len(), ranks);
            let mut next = 0;
            for r in &runs {
                assert!(r.is_empty() || r.start == next, "{runs:?}");
                next = if r.is_empty() { next } else { r.end };
            }
            assert_eq!(next, gpt2.len(), "{runs:?}");
            let load = |r: &Range<usize>| gpt2[r.clone()].iter().sum::<usize>();
            let worst = runs.iter().map(load).max().unwrap();
            // no contiguous split does better (checked by brute force over the cut points for two
            // and three ranks)
            if ranks == 2 {
                let best = (1..gpt2.len()).map(|c| gpt2[..c].iter().sum::<usize>().max(gpt2[c..].iter().sum())).min().unwrap();
                assert_eq!(worst, best);
            }
            if ranks == 3 {
                let s = |a: usize, b: usize| gpt2[a..b].iter().sum::<usize>();
                let best = (1..gpt2.len())
                    .flat_map(|a| (a + 1..gpt2.len()).map(move |b| (a, b)))
                    .map(|(a, b)| s(0, a).max(s(a, b)).max(s(b, gpt2.len())))
                    .min()
                    .unwrap();
                assert_eq!(worst, best);
            }
            // never above one rank's fair share plus the largest tensor
            assert!(worst <= gpt2.iter().sum::<usize>() / ranks + gpt2[0], "{ranks}: {worst}");
        }
        assert_eq!(split(&gpt2, 1), vec![0..gpt2.len()]);
        // more ranks than tensors: the rest own nothing
        assert_eq!(split(&[5, 5], 3), vec![0..1, 1..2, 2..2]);
    }

    #[test]
    fn parts_are_the_runs_spans_back_to_back() {
        let spans = [Span::new(0, 6), Span::new(6, 2), Span::new(8, 2), Span::new(10, 6)];
        let p = parts(&spans, 2);
        assert_eq!((p[0].off, p[0].len, p[1].off, p[1].len), (0, 8, 8, 8));
        let p = parts(&spans, 5);
        assert_eq!(p.iter().map(|s| s.len).sum::<usize>(), 16);
        assert!(p.windows(2).all(|w| w[0].end() == w[1].off));
        assert_eq!((p[4].off, p[4].len), (16, 0));
    }
}
