//! The CPU-specific kernels: the only module of the crate with `unsafe`
//! (intrinsics, `asm!`). Each kernel is a `#[target_feature]` function;
//! the safe entry points here call one only after the CPU reported its
//! features (`is_x86_feature_detected!` / `is_aarch64_feature_detected!`,
//! cached by std), and fall back (return false) otherwise.

#![allow(unsafe_code)]

use crate::sm3;
use crate::sm4::Impl;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_sm3;

/// Why `imp` cannot run on this CPU (`None`: it can).
pub(crate) fn sm4_unavailable(imp: Impl) -> Option<&'static str> {
    match imp {
        Impl::Portable => None,
        #[cfg(target_arch = "x86_64")]
        Impl::GfniAvx512 | Impl::GfniAvx2 | Impl::VaesAvx2 | Impl::AesniAvx2 => {
            x86::sm4_unavailable(imp)
        }
        #[cfg(target_arch = "aarch64")]
        Impl::Sm4Ce | Impl::Neon => aarch64::sm4_unavailable(imp),
        #[allow(unreachable_patterns)]
        Impl::GfniAvx512 | Impl::GfniAvx2 | Impl::VaesAvx2 | Impl::AesniAvx2 => Some("x86_64 only"),
        #[allow(unreachable_patterns)]
        Impl::Sm4Ce | Impl::Neon => Some("aarch64 only"),
    }
}

/// `blocks` through `imp` under one key; false if this CPU cannot run it.
#[inline]
pub(crate) fn sm4_blocks(imp: Impl, rk: &[u32; 32], blocks: &mut [[u8; 16]]) -> bool {
    let _ = (rk, &blocks);
    match imp {
        #[cfg(target_arch = "x86_64")]
        Impl::GfniAvx512 | Impl::GfniAvx2 | Impl::VaesAvx2 | Impl::AesniAvx2 => {
            x86::sm4_blocks(imp, rk, blocks)
        }
        #[cfg(target_arch = "aarch64")]
        Impl::Sm4Ce | Impl::Neon => aarch64::sm4_blocks(imp, rk, blocks),
        _ => false,
    }
}

/// Block i through `imp` under `rks[i]`; false if this CPU cannot run it.
#[inline]
pub(crate) fn sm4_blocks_keyed(imp: Impl, rks: &[[u32; 32]], blocks: &mut [[u8; 16]]) -> bool {
    let _ = (rks, &blocks);
    match imp {
        #[cfg(target_arch = "x86_64")]
        Impl::GfniAvx512 | Impl::GfniAvx2 | Impl::VaesAvx2 | Impl::AesniAvx2 => {
            x86::sm4_blocks_keyed(imp, rks, blocks)
        }
        #[cfg(target_arch = "aarch64")]
        Impl::Sm4Ce | Impl::Neon => aarch64::sm4_blocks_keyed(imp, rks, blocks),
        _ => false,
    }
}

/// Why `imp` cannot run on this CPU (`None`: it can).
pub(crate) fn sm3_unavailable(imp: sm3::Impl) -> Option<&'static str> {
    match imp {
        sm3::Impl::Portable => None,
        #[cfg(target_arch = "aarch64")]
        sm3::Impl::Sm3Ce => aarch64::sm3_unavailable(),
        #[allow(unreachable_patterns)]
        sm3::Impl::Sm3Ce => Some("aarch64 only"),
        #[cfg(target_arch = "x86_64")]
        sm3::Impl::Avx512x16 => match x86_sm3::lanes() {
            Some(16) => None,
            _ => Some("CPU lacks avx512f"),
        },
        #[cfg(target_arch = "x86_64")]
        sm3::Impl::Avx2x8 => x86_sm3::lanes().is_none().then_some("CPU lacks avx2"),
        #[allow(unreachable_patterns)]
        sm3::Impl::Avx512x16 | sm3::Impl::Avx2x8 => Some("x86_64 only"),
    }
}

/// One SM3 block per lane, 16 lanes (x86_64 AVX-512); false if this CPU
/// cannot run it.
#[allow(unused_variables)]
pub(crate) fn sm3_x16(state: &mut [[u32; 16]; 8], w: &[[u32; 16]; 16]) -> bool {
    #[cfg(target_arch = "x86_64")]
    return x86_sm3::compress_x16(state, w);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One SM3 block per lane, 8 lanes (x86_64 AVX2); false if this CPU cannot
/// run it.
#[allow(unused_variables)]
pub(crate) fn sm3_x8(state: &mut [[u32; 8]; 8], w: &[[u32; 8]; 16]) -> bool {
    #[cfg(target_arch = "x86_64")]
    return x86_sm3::compress_x8(state, w);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// SM3 compression of `blocks` into `state` with `imp`; false if this CPU
/// cannot run it.
#[inline]
pub(crate) fn sm3_compress(imp: sm3::Impl, state: &mut [u32; 8], blocks: &[[u8; 64]]) -> bool {
    let _ = (&state, blocks);
    match imp {
        #[cfg(target_arch = "aarch64")]
        sm3::Impl::Sm3Ce => aarch64::sm3_compress(state, blocks),
        _ => false,
    }
}
