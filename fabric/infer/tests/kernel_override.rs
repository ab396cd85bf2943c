//! `FABRIC_INFER_KERNEL` forces the kernel path. One test in its own binary: it changes the
//! process environment, which no other test may observe.

use infer::{Engine, Error, Path};

#[test]
fn environment_override_forces_scalar_and_refuses_unknown_names() {
    // SAFETY: this binary runs this single test, so no other thread reads the environment.
    unsafe { std::env::set_var(infer::cpu::KERNEL_ENV, "scalar") };
    assert_eq!(Engine::detect().unwrap().path(), Path::Scalar);

    // SAFETY: as above.
    unsafe { std::env::set_var(infer::cpu::KERNEL_ENV, "tpu") };
    assert!(matches!(
        Engine::detect(),
        Err(Error::BadKernelOverride { .. })
    ));

    // SAFETY: as above.
    unsafe { std::env::set_var(infer::cpu::KERNEL_ENV, "auto") };
    assert_eq!(
        Engine::detect().unwrap().path(),
        infer::Features::host().best_path()
    );
}
