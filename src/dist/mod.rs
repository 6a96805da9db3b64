//! Data parallelism over processes: one process per rank, launched the way torchrun, `mpirun`
//! and `srun` users launch PyTorch (`torchrun --no-python --nproc_per_node=2 gptrain train ...`,
//! `mpirun -np 2 gptrain train ...`). Each rank runs its share of an iteration's micro-batches
//! (the same global batch as one process with the whole gradient accumulation); the gradients,
//! losses and evaluation sums are added across ranks in rank order, so every rank takes the
//! same update and the ranks' parameters stay identical without being sent.
//!
//! [`World`] is who this process is, read from the launcher's environment; [`group::Group`]
//! is the sums over TCP (the CPU backend's collective, and the testable twin of the NCCL
//! one a GPU rank will use).

pub mod group;
pub mod zero;

use anyhow::{bail, Result};

/// This process's place among the ranks of a data-parallel run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// Its rank among the processes on this machine (the GPU it would take).
    pub local_rank: usize,
    /// Processes on this machine (`size` when the launcher does not say).
    pub local_size: usize,
    /// The launcher the variables came from ("torchrun", "Open MPI", ...; "none" for one process).
    pub source: &'static str,
}

impl World {
    /// One process alone.
    pub const ALONE: World = World { rank: 0, size: 1, local_rank: 0, local_size: 1, source: "none" };

    /// This process's world, from the environment.
    pub fn from_env() -> Result<World> {
        detect(&|k| std::env::var(k).ok())
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// The contiguous share `[start, end)` of `n` items (micro-batches, evaluation batches)
    /// that this rank takes: `n / size` each, the first `n % size` ranks one more.
    pub fn share(&self, n: usize) -> (usize, usize) {
        let (q, r) = (n / self.size, n % self.size);
        let start = self.rank * q + self.rank.min(r);
        (start, start + q + usize::from(self.rank < r))
    }
}

/// The launchers' variables: (launcher, rank, world size, local rank, local size). The first
/// launcher whose rank and size are both set wins.
const LAUNCHERS: [(&str, &str, &str, &str, &str); 4] = [
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("MPICH/Intel MPI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    // srun's own step (SLURM_NTASKS alone is also set in a batch script that runs one process)
    ("Slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE"),
];

/// The world `env` describes (`env(name)`: a variable's value).
pub fn detect(env: &dyn Fn(&str) -> Option<String>) -> Result<World> {
    for (source, rank_var, size_var, local_var, local_size_var) in LAUNCHERS {
        let (rank, size) = (env(rank_var), env(size_var));
        // (Slurm sets SLURM_PROCID in a batch script's single process too: its step size decides)
        if size.is_none() && (rank.is_none() || source == "Slurm") {
            continue;
        }
        let num = |var: &str, v: Option<String>| -> Result<Option<usize>> {
            let Some(v) = v else { return Ok(None) };
            match v.trim().parse::<usize>() {
                Ok(n) => Ok(Some(n)),
                Err(_) => bail!("{var}={v:?} (set by {source}?) is not a number; unset it to run as one process"),
            }
        };
        let (Some(rank), Some(size)) = (num(rank_var, rank)?, num(size_var, size)?) else {
            bail!("{rank_var} and {size_var} must be set together (one of them is set, as {source} would); unset it to run as one process")
        };
        if size == 0 || rank >= size {
            bail!("{rank_var}={rank} is not a rank of a world of {size_var}={size}");
        }
        let local_rank = num(local_var, env(local_var))?.unwrap_or(rank);
        // Slurm's tasks per node can read "2(x4)": take the leading count
        let local_size = env(local_size_var)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()))
            .filter(|&n: &usize| n > local_rank)
            .unwrap_or(size);
        return Ok(World { rank, size, local_rank, local_size, source });
    }
    Ok(World::ALONE)
}

/// An environment of `vars` only, for tests.
#[cfg(test)]
pub(crate) fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_launchers_variables_give_the_world() {
        assert_eq!(detect(&env(&[])).unwrap(), World::ALONE);
        let torchrun = [("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")];
        assert_eq!(detect(&env(&torchrun)).unwrap(), World { rank: 3, size: 8, local_rank: 1, local_size: 2, source: "torchrun" });
        let ompi = [("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")];
        assert_eq!(detect(&env(&ompi)).unwrap(), World { rank: 1, size: 2, local_rank: 1, local_size: 2, source: "Open MPI" });
        let pmi = [("PMI_RANK", "0"), ("PMI_SIZE", "4"), ("MPI_LOCALRANKID", "0"), ("MPI_LOCALNRANKS", "4")];
        assert_eq!(detect(&env(&pmi)).unwrap().source, "MPICH/Intel MPI");
        let srun = [("SLURM_PROCID", "5"), ("SLURM_STEP_NUM_TASKS", "8"), ("SLURM_LOCALID", "1"), ("SLURM_STEP_TASKS_PER_NODE", "4(x2)")];
        assert_eq!(detect(&env(&srun)).unwrap(), World { rank: 5, size: 8, local_rank: 1, local_size: 4, source: "Slurm" });
        // a batch script's own process: Slurm's allocation, no srun step
        assert_eq!(detect(&env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")])).unwrap(), World::ALONE);
    }

    #[test]
    fn inconsistent_variables_are_one_line_errors() {
        let e = |vars: &[(&str, &str)]| format!("{:#}", detect(&env(vars)).unwrap_err());
        assert!(e(&[("RANK", "0")]).contains("RANK and WORLD_SIZE must be set together"));
        assert!(e(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("is not a rank of a world"));
        assert!(e(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("is not a number"));
        assert!(!e(&[("RANK", "0")]).contains('\n'));
    }

    #[test]
    fn shares_cover_every_item_once_in_rank_order() {
        for size in 1..5 {
            for n in 0..11 {
                let mut next = 0;
                for rank in 0..size {
                    let (s, e) = World { rank, size, local_rank: rank, local_size: size, source: "t" }.share(n);
                    assert_eq!(s, next);
                    assert!(e >= s && e - s <= n.div_ceil(size));
                    next = e;
                }
                assert_eq!(next, n);
            }
        }
    }
}
