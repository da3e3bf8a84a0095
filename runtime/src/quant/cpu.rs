//! Run-time CPU feature detection: which kernel path this machine runs.

use std::sync::OnceLock;

/// A family of kernel implementations. Every path computes the same integer dot
/// products as the scalar reference; only float summation order may differ, and not
/// for prompts, whose kernels give the same bits on every path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelPath {
    /// Portable Rust, the reference every other path is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (`vpdpbusd`).
    Avx512Vnni,
}

impl KernelPath {
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            KernelPath::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512Vnni => {
                KernelPath::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every path this CPU supports, slowest first.
    pub fn supported() -> Vec<KernelPath> {
        [KernelPath::Scalar, KernelPath::Avx2, KernelPath::Avx512Vnni]
            .into_iter()
            .filter(|p| p.is_supported())
            .collect()
    }
}

/// The path used by default: the best supported one, unless `SMQ_KERNEL_PATH`
/// (`scalar`, `avx2`, `avx512-vnni`) asks for a supported lower one.
pub fn best_path() -> KernelPath {
    static PATH: OnceLock<KernelPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        let best = *KernelPath::supported()
            .last()
            .unwrap_or(&KernelPath::Scalar);
        match std::env::var("SMQ_KERNEL_PATH").ok().as_deref() {
            Some("scalar") => KernelPath::Scalar,
            Some("avx2") if KernelPath::Avx2.is_supported() => KernelPath::Avx2,
            _ => best,
        }
    })
}

/// The CPU's model name (from /proc/cpuinfo on Linux), for benchmark reports.
pub fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
