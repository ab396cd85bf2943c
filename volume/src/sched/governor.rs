//! Recovery that protects clients: instead of a fixed pace, the recovery class of a disk gets
//! a limit that keeps the clients' p99 latency on that disk within a target (by default 1.2 ×
//! the p99 they had recently without recovery), and the rest of the disk. A pure state
//! machine: [`Governor::observe`] takes what one window of time saw and says what the limit
//! is now; the disk scheduler measures and applies.
//!
//! The rule is additive increase, multiplicative decrease, on bytes per second of recovery:
//! - no client IO finished in the window or in flight at its end: nothing to protect, no
//!   limit;
//! - clients, and no limit yet (recovery ran free, or there was none): the limit is set at the
//!   floor, so that recovery beside clients earns its rate rather than bursting at full speed
//!   until the first cut, however harmless the first window looked;
//! - clients that finished too few IOs for a p99: none (starved), the floor; some, the limit
//!   stays;
//! - clients and no recovery: the window's client p99 feeds the idle baseline;
//! - both: over the target, the limit drops to 60 % of what recovery did in the window; under
//!   it, it rises by an eighth (at least half the floor), unless it is far above what recovery
//!   uses. It never goes below the floor, so a rebuild always progresses.
//! - both, and no baseline yet (recovery started before any quiet window): recovery is held at
//!   the floor for a window, and that window's client p99 is the baseline.

/// Tunables of a [`Governor`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GovernorConfig {
    /// Client p99 allowed during recovery, as a multiple of the idle p99.
    pub target_ratio: f64,
    /// Recovery never gets less than this, in bytes per second.
    pub floor_bytes_per_sec: u64,
    /// Windows with fewer client IOs judge nothing (a p99 of a handful of IOs is noise).
    pub min_client_ios: u64,
    /// Weight of a new quiet window in the idle baseline (exponential average).
    pub baseline_weight: f64,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        GovernorConfig {
            target_ratio: 1.2,
            floor_bytes_per_sec: 8 << 20,
            min_client_ios: 50,
            baseline_weight: 0.25,
        }
    }
}

/// What the disk saw in one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Length of the window, in ns.
    pub span_ns: u64,
    /// Client IOs asked and not finished when the window ended.
    pub client_in_flight: u64,
    /// Client IOs completed, and their p99 latency (waiting in the scheduler included), in ns.
    pub client_ios: u64,
    pub client_p99_ns: u64,
    /// Recovery IOs completed, and their bytes.
    pub recovery_ios: u64,
    pub recovery_bytes: u64,
}

/// The recovery limit of one disk.
#[derive(Clone, Debug)]
pub struct Governor {
    config: GovernorConfig,
    /// The clients' p99 without recovery, in ns.
    baseline_ns: Option<f64>,
    /// Bytes per second; `None`: no limit.
    limit: Option<u64>,
    /// The last window was held at the floor to measure a baseline.
    probing: bool,
}

impl Governor {
    pub fn new(config: GovernorConfig) -> Governor {
        Governor {
            config,
            baseline_ns: None,
            limit: None,
            probing: false,
        }
    }

    /// The clients' p99 without recovery, in ns, as far as known.
    pub fn baseline_ns(&self) -> Option<u64> {
        self.baseline_ns.map(|b| b as u64)
    }

    /// The limit now, in bytes per second (`None`: none).
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// The client p99 the limit aims to stay under, in ns, once there is a baseline.
    /// Whether `w` saw enough client IOs to judge, with a p99 above the target.
    pub fn over_target(&self, w: &Window) -> bool {
        w.client_ios >= self.config.min_client_ios
            && self.target_ns().is_some_and(|t| w.client_p99_ns > t)
    }

    pub fn target_ns(&self) -> Option<u64> {
        self.baseline_ns
            .map(|b| (b * self.config.target_ratio) as u64)
    }

    fn fold_baseline(&mut self, p99_ns: u64) {
        let w = self.config.baseline_weight;
        self.baseline_ns = Some(match self.baseline_ns {
            None => p99_ns as f64,
            Some(b) => b * (1.0 - w) + p99_ns as f64 * w,
        });
    }

    /// Takes one window and returns the recovery limit from now on.
    pub fn observe(&mut self, w: &Window) -> Option<u64> {
        let floor = self.config.floor_bytes_per_sec;
        if w.client_ios == 0 && w.client_in_flight == 0 {
            // No client anywhere in the window: nothing to protect.
            self.probing = false;
            self.limit = None;
            return self.limit;
        }
        let Some(limit) = self.limit else {
            // Clients and recovery meet (recovery ran free, there was no one to protect):
            // recovery starts at the floor and earns its rate, whatever this first window
            // saw. A burst at full speed until the first cut can cost a short rebuild's
            // clients their p99, and clients it starves finish too few IOs to judge by.
            if w.recovery_ios == 0 && w.client_ios >= self.config.min_client_ios {
                self.fold_baseline(w.client_p99_ns);
            }
            self.limit = Some(floor);
            self.probing = self.baseline_ns.is_none();
            return self.limit;
        };
        if w.client_ios < self.config.min_client_ios {
            // Clients asked but finished too few IOs for a p99 (they are few, or starved):
            // starved (none finished) drops recovery to the floor; otherwise the limit stays.
            self.limit = Some(if w.client_ios == 0 { floor } else { limit });
            return self.limit;
        }
        let probing = std::mem::take(&mut self.probing);
        if w.recovery_ios == 0 || probing {
            // Without recovery, or with it held at the floor: what clients have alone.
            self.fold_baseline(w.client_p99_ns);
            if w.recovery_ios == 0 {
                return self.limit;
            }
        }
        let Some(target) = self.target_ns() else {
            // Recovery started before any quiet window: held at the floor for one, whose
            // client p99 is the baseline.
            self.probing = true;
            self.limit = Some(floor);
            return self.limit;
        };
        let secs = (w.span_ns.max(1) as f64) / 1e9;
        let used = (w.recovery_bytes as f64 / secs) as u64;
        self.limit = Some(if w.client_p99_ns > target {
            let from = limit.min(used.max(floor));
            ((from as f64 * 0.6) as u64).max(floor)
        } else {
            let raised = limit + (limit / 8).max(floor / 2);
            // Far above what recovery uses, it is not what holds recovery back: kept.
            if raised <= used.saturating_mul(4).max(floor * 4) {
                raised
            } else {
                limit
            }
        });
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const MIB: u64 = 1 << 20;

    fn window(client_ios: u64, p99_ms: f64, recovery_mib: u64) -> Window {
        Window {
            span_ns: 500 * MS,
            client_in_flight: 0,
            client_ios,
            client_p99_ns: (p99_ms * MS as f64) as u64,
            recovery_ios: recovery_mib / 4,
            recovery_bytes: recovery_mib * MIB,
        }
    }

    #[test]
    fn no_clients_no_limit_and_quiet_windows_make_the_baseline_and_set_the_floor() {
        let mut g = Governor::new(GovernorConfig::default());
        assert_eq!(g.observe(&window(0, 0.0, 400)), None);
        assert_eq!(g.observe(&window(1000, 2.0, 0)), Some(8 * MIB));
        assert_eq!(g.baseline_ns(), Some(2 * MS));
        assert_eq!(g.target_ns(), Some(2_400_000));
    }

    #[test]
    fn recovery_beside_clients_earns_its_rate_is_cut_when_it_hurts_and_grows_back() {
        let mut g = Governor::new(GovernorConfig::default());
        g.observe(&window(1000, 2.0, 0));
        // Starting at the floor (4 MiB in 0.5 s), within the target: it grows, by half the
        // floor while that is more than an eighth.
        let mut limit = 8 * MIB;
        for _ in 0..20 {
            let used_mib = limit / MIB / 2;
            let next = g.observe(&window(1000, 2.1, used_mib)).unwrap();
            assert_eq!(next, limit + (limit / 8).max(4 * MIB));
            limit = next;
        }
        assert!(limit > 100 * MIB, "{limit}");
        // Now it pushes the p99 to 5 ms: cut to 60 % of what it did.
        let used = limit / MIB / 2;
        let cut = g.observe(&window(1000, 5.0, used)).unwrap();
        assert_eq!(cut, ((used * 2 * MIB) as f64 * 0.6) as u64);
        // Still too slow: cut again.
        let again = g.observe(&window(1000, 3.0, cut / MIB / 2)).unwrap();
        assert!(again < cut, "{again} {cut}");
        // Within the target: it grows by an eighth.
        let grown = g.observe(&window(1000, 2.2, again / MIB / 2)).unwrap();
        assert_eq!(grown, again + again / 8);
        // Clients leave: recovery runs free.
        assert_eq!(g.observe(&window(0, 0.0, 400)), None);
    }

    #[test]
    fn clients_too_few_to_judge_keep_the_limit_and_starved_ones_drop_it_to_the_floor() {
        let mut g = Governor::new(GovernorConfig::default());
        g.observe(&window(1000, 2.0, 0));
        let mut limit = 8 * MIB;
        while limit < 64 * MIB {
            limit = g.observe(&window(1000, 2.0, limit / MIB / 2)).unwrap();
        }
        // A handful of IOs, however slow: no p99 to judge by, the limit stays.
        assert_eq!(g.observe(&window(3, 9.0, 30)), Some(limit));
        // Clients asked and none finished: starved, recovery goes to the floor.
        let starved = Window {
            client_in_flight: 8,
            client_ios: 0,
            ..window(0, 0.0, 60)
        };
        assert_eq!(g.observe(&starved), Some(8 * MIB));
        assert_eq!(
            g.baseline_ns(),
            Some(2 * MS),
            "a starved window is no baseline"
        );
    }

    #[test]
    fn clients_that_come_to_recovery_running_free_put_it_at_the_floor() {
        let mut g = Governor::new(GovernorConfig::default());
        g.observe(&window(1000, 2.0, 0));
        assert_eq!(
            g.observe(&window(0, 0.0, 400)),
            None,
            "no clients, no limit"
        );
        // The clients' first window beside it happened to be fine: the floor all the same.
        assert_eq!(g.observe(&window(1000, 2.0, 200)), Some(8 * MIB));
        assert_eq!(g.observe(&window(0, 0.0, 400)), None);
        // Or it hurt: the floor too, not 60 % of the free rate.
        assert_eq!(g.observe(&window(1000, 9.0, 200)), Some(8 * MIB));
    }

    #[test]
    fn the_limit_never_drops_below_the_floor() {
        let mut g = Governor::new(GovernorConfig::default());
        g.observe(&window(1000, 1.0, 0));
        for _ in 0..20 {
            let l = g.observe(&window(1000, 50.0, 8)).unwrap();
            assert!(l >= 8 * MIB, "{l}");
        }
    }

    #[test]
    fn without_a_baseline_recovery_is_held_at_the_floor_for_a_window_to_measure_one() {
        let mut g = Governor::new(GovernorConfig::default());
        assert_eq!(g.observe(&window(1000, 6.0, 100)), Some(8 * MIB));
        // The probing window, recovery at the floor: its p99 is the baseline.
        g.observe(&window(1000, 2.0, 4));
        assert_eq!(g.baseline_ns(), Some(2 * MS));
    }
}
