"""`RadiusPath`, the result of `radius_path`: the fits per radius and seed,
the physics-only reference, the chosen and eligible radii, and how the
constants move over them.
"""

import math

import numpy as np

from keras_hybrid._plotting import labelled, percent, pyplot
from keras_hybrid.radius.selection import eligible_radii, paired_t_test
from keras_hybrid.sam import SAM


# Excess of the lowest training loss over the physics part alone's, as a
# fraction of the latter's magnitude, beyond which the fits are reported as
# not converged (mini-batch noise and SAM's own bias stay well below it on
# converged fits).
CONVERGENCE_SLACK = 0.1
#: A constant within this fraction of its initial value in every eligible
#: fit was not moved by the fits (`RadiusPath.unmoved`).
UNMOVED_TOLERANCE = 0.01


class RadiusPath:
    """Result of `radius_path`: one row per (radius, seed).

    Attributes:
        rows: list of dicts, one per fit, with `rho`, `seed`, `constants`
            (`name -> value`), `train_loss`, `val_loss`, `val_se` (its
            standard error), `val_losses` (the per-sample validation
            losses, when the compiled loss allows them) and `net_share`
            (how much of the model's output on the training inputs is the
            network's: `||f(x) - f_0(x)|| / ||f(x)||`, where `f_0` is the
            model with its network weights set to zero; for an additive
            correction that is the correction's share).
        physics_only: the same dict for the physics part alone (network
            weights zeroed and frozen, constants refitted), or `None`.
        rhos: the radii, in increasing order.
        summary: one dict per radius, the means over seeds (`rho`,
            `train_loss`, `val_loss`, `net_share`, `constants`) and the
            standard deviation of each constant over seeds (`constants_std`).
        chosen: the radius chosen by `choose_radius` from the mean
            validation losses (and the physics-only loss as reference).
        eligible: the radii the selection rule cannot tell from the best
            one (and not worse than the physics part alone).
        rule: the selection rule asked for (`"paired"` or `"relative"`).
        rule_used: the rule applied (`"paired"` falls back to
            `"relative"` when the rows carry neither per-sample losses nor
            standard errors).
        test: the test applied: `"signed rank"`, `"paired t"`,
            `"unpaired z"` or `None` (relative rule).
        paired_test: the paired rule's test asked for (`"auto"`,
            `"signed_rank"` or `"t"`; see `kh.radius_p_values`).
        p_values: per radius, the one-sided p-value of "worse than the
            best radius" (`None` under the relative rule).
        level: family-wise level of the paired rule.
        margin: the paired rule's tolerated fraction of the gap between
            the physics part alone and the best radius.
        untrained: names of the constants that the fits did not train
            (frozen, or supplied per sample through `constants=`); they
            are left out of `stable`, `spread` and `unmoved`.
        stable: `name -> bool`: the constant moved by at most
            `stable_tolerance` (relative spread) over the eligible radii.
        spread: `name -> float`: that relative spread
            `(max - min) / |median|` over the eligible radii.
        fit_change: `"train_loss"` / `"net_share"` -> their relative
            spread over the eligible radii.
        probed: the eligible radii (two or more) change the fit: one of
            `fit_change` exceeds `stable_tolerance`. If not, constants
            that stay put over them are not shown to be decided by the
            data, and `kh.constant_uncertainty(..., path=path)` does not
            count their stability as evidence.
        unmoved: `name -> bool`: the constant stayed within 1 % of its
            initial value in every eligible fit (`UNMOVED_TOLERANCE`;
            rows that recorded it): the fits did not move it, and its
            stability is not counted as evidence either.
        network_needed: `False` when the physics part alone fits the
            validation data at least as well as every radius.
        converged: `False` when every radius fits the *training* data
            worse than the physics part alone (by more than
            `CONVERGENCE_SLACK` times its magnitude). The hybrid contains
            the physics part (a network with zero output), so its fits have
            then not reached a minimum, and the comparison of radii says
            little.
        best_model: the fitted model at the chosen radius (the seed with
            the lowest validation loss).
        units: `name -> unit`.
        sam: the SAM settings whose radius was varied.
        tolerance: the selection tolerance.
    """

    def __init__(self, rows, physics_only, sam, tolerance, stable_tolerance, units, models,
                 noise_level=2.0, rule="paired", level=0.05, margin=0.0, paired_test="auto"):
        self.rows = rows
        self.noise_level = noise_level
        self.physics_only = physics_only
        self.sam = sam
        self.tolerance = tolerance
        self.stable_tolerance = stable_tolerance
        self.units = units
        self.rule = rule
        self.level = level
        self.margin = margin
        self.paired_test = paired_test
        self.rhos = sorted({row["rho"] for row in rows})
        self.summary = [self._summarize(rho) for rho in self.rhos]
        reference = None if physics_only is None else physics_only["val_loss"]
        val = [s["val_loss"] for s in self.summary]
        se = [s["val_se"] for s in self.summary]
        samples = [self._per_sample(rho) for rho in self.rhos]
        if any(x is None for x in samples):
            samples = None
        result = eligible_radii(self.rhos, val, tolerance, reference, se, noise_level, rule=rule,
                                per_sample_losses=samples, level=level, margin=margin,
                                paired_test=paired_test)
        finite = [v for v in val if math.isfinite(v)]
        best = min(finite) if finite else math.nan
        self.eligible = result["eligible"]
        self._best_rho = result["best"]
        self.chosen = max(self.eligible) if self.eligible else None
        self.limit = result["limit"]
        self.rule_used = result["rule"]
        self.test = result["test"]
        self.p_values = result["p_values"]
        self.network_needed = not (
            reference is not None and math.isfinite(reference) and finite and reference <= best
        )
        self.converged = self._converged()
        self.untrained = sorted({name for r in rows for name in r.get("untrained_constants", ())})
        self.spread, self.stable = self._stability()
        self.unmoved = self._unmoved()
        self.fit_change, self.probed = self._probing()
        self.best_model = models.get(self.chosen)

    def _lowest_train_loss(self):
        finite = [s["train_loss"] for s in self.summary if math.isfinite(s["train_loss"])]
        return min(finite) if finite else math.inf

    def _converged(self):
        reference = None if self.physics_only is None else self.physics_only.get("train_loss")
        if reference is None or not math.isfinite(reference):
            return True
        # |reference|: losses may be negative (cosine similarity, Gaussian NLL).
        return self._lowest_train_loss() <= reference + CONVERGENCE_SLACK * abs(reference)

    def _p_value_line(self):
        return "p-values (worse than the best): " + ", ".join(
            f"{r:g}: {'best' if r == self._best_rho else f'{p:.2g}'}"
            for r, p in zip(self.rhos, self.p_values))

    def _per_sample(self, rho):
        """Per-sample validation losses at `rho`, averaged over seeds
        (`None` if a row lacks them)."""
        rows = [row for row in self.rows if row["rho"] == rho]
        if any(row.get("val_losses") is None for row in rows):
            return None
        losses = [np.asarray(row["val_losses"], "float64") for row in rows]
        if len({x.shape for x in losses}) != 1:
            return None
        return np.mean(losses, axis=0)

    def _summarize(self, rho):
        rows = [row for row in self.rows if row["rho"] == rho]
        names = list(rows[0]["constants"])
        values = {n: np.array([row["constants"][n] for row in rows]) for n in names}
        return {
            "rho": rho,
            "train_loss": float(np.mean([row["train_loss"] for row in rows])),
            "val_loss": float(np.mean([row["val_loss"] for row in rows])),
            "val_se": float(np.mean([row.get("val_se", math.nan) for row in rows])),
            "net_share": float(np.mean([row["net_share"] for row in rows])),
            "constants": {n: float(np.mean(v)) for n, v in values.items()},
            "constants_std": {n: float(np.std(v)) for n, v in values.items()},
        }

    def _eligible_summary(self):
        return [s for s in self.summary if s["rho"] in self.eligible]

    def _stability(self):
        chosen = self._eligible_summary()
        spread, stable = {}, {}
        if not chosen:
            return spread, stable
        for name in chosen[0]["constants"]:
            if name in self.untrained:
                continue  # it keeps its value whatever the radius
            spread[name] = _relative_spread([s["constants"][name] for s in chosen])
            stable[name] = len(chosen) >= 2 and spread[name] <= self.stable_tolerance
        return spread, stable

    def _unmoved(self):
        """`name -> bool`: the constant is within `UNMOVED_TOLERANCE` of its
        initial value in every eligible fit (rows that recorded it). Its
        agreement over the radii then shows only that the fits were too
        short, or too timid, to move it."""
        rows = [r for r in self.rows if r["rho"] in self.eligible and r.get("initial_constants")]
        if len(self.eligible) < 2 or not rows:
            return {}
        return {
            name: all(abs(r["constants"][name] - r["initial_constants"][name])
                      <= UNMOVED_TOLERANCE * max(abs(r["initial_constants"][name]), 1e-12)
                      for r in rows)
            for name in rows[0]["constants"] if name not in self.untrained
        }

    def _probing(self):
        """`(fit_change, probed)`: the relative range of the training loss
        and of the network's share over the eligible radii, and whether
        either exceeds `stable_tolerance`. Radii that all give the same
        fit do not test the constants: their agreement is no evidence that
        the data, rather than the regularization, decide them."""
        chosen = self._eligible_summary()
        if len(chosen) < 2:
            return {}, False
        change = {}
        for key in ("train_loss", "net_share"):
            values = [s[key] for s in chosen]
            if all(math.isfinite(v) for v in values):
                change[key] = _relative_spread(values)
        if not change:  # nothing to judge by: the path is taken at its word
            return change, True
        return change, max(change.values()) > self.stable_tolerance

    def _eligible_against_best(self):
        """`(rho, its per-sample validation losses, the best radius's)` for
        each eligible radius other than the one of lowest mean loss (none
        without per-sample losses)."""
        best = self._best_rho
        best_losses = None if best is None else self._per_sample(best)
        if best_losses is None:
            return []
        out = []
        for rho in self.eligible:
            losses = None if rho == best else self._per_sample(rho)
            if losses is not None:
                out.append((rho, np.asarray(losses), np.asarray(best_losses)))
        return out

    def mostly_worse(self):
        """Eligible radii that a one-sided sign test on the per-sample
        validation losses finds worse than the radius of lowest mean loss
        (at `level`, no multiplicity correction: a warning, not a rule).

        Returns:
            A list of `(rho, points worse, points that differ)`.
        """
        out = []
        for rho, losses, best_losses in self._eligible_against_best():
            diff = losses - best_losses
            worse, n = int(np.sum(diff > 0)), int(np.sum(diff != 0))
            tail = sum(math.comb(n, k) for k in range(worse, n + 1)) / 2.0**n if n else 1.0
            if tail < self.level:
                out.append((rho, worse, n))
        return out

    def worse_on_average(self):
        """Eligible radii whose mean validation loss a one-sided paired t
        test finds higher than the best radius's (at `level`, no
        multiplicity correction: a warning, not a rule). The signed-rank
        test reads ranks, so it keeps a radius that is better on most
        samples but far worse on a few; this names such radii.

        Returns:
            A list of `(rho, p-value)`; empty under the t test itself.
        """
        if self.test != "signed rank":
            return []
        out = []
        for rho, losses, best_losses in self._eligible_against_best():
            _, p = paired_t_test(losses, best_losses)
            if p < self.level:
                out.append((rho, p))
        return out

    def selection_ranges(self):
        """`name -> (min, max)` of each constant over the fits (all seeds)
        at the eligible radii: the spread that the validation data cannot
        resolve, i.e. the model-selection part of a constant's uncertainty
        (`kh.constant_uncertainty(..., path=path)` widens its intervals by
        it)."""
        rows = [row for row in self.rows if row["rho"] in self.eligible]
        if not rows:
            return {}
        return {
            name: (min(row["constants"][name] for row in rows),
                   max(row["constants"][name] for row in rows))
            for name in rows[0]["constants"]
        }

    def refine_rhos(self):
        """Radii between the chosen radius and its neighbours on the grid
        (geometric midpoints, two significant digits; a third of the
        chosen radius below it when its neighbour is 0), to fit next
        (e.g. `radius_path(..., rhos=path.refine_rhos())`) when only the
        chosen radius is eligible: a single radius cannot show whether
        the constants stay put near it.

        Returns:
            A list of new radii (empty without a positive chosen radius).
        """
        if not self.chosen:
            return []
        i = self.rhos.index(self.chosen)
        out = []
        if i > 0:
            low = self.rhos[i - 1]
            out.append(math.sqrt(low * self.chosen) if low > 0 else self.chosen / 3.0)
        if i + 1 < len(self.rhos):
            out.append(math.sqrt(self.chosen * self.rhos[i + 1]))
        return [float(f"{r:.2g}") for r in out if float(f"{r:.2g}") not in self.rhos]

    def constants_at(self, rho):
        """Mean constants over seeds at radius `rho`, `name -> value`."""
        for s in self.summary:
            if s["rho"] == rho:
                return dict(s["constants"])
        raise ValueError(f"`rho` must be one of {self.rhos}. Received: rho={rho!r}")

    def to_dict(self):
        """JSON-serializable summary (no model)."""
        return {
            "sam": self.sam.get_config(),
            "tolerance": self.tolerance,
            "stable_tolerance": self.stable_tolerance,
            "noise_level": self.noise_level,
            "rule": self.rule,
            "level": self.level,
            "margin": self.margin,
            "paired_test": self.paired_test,
            "rule_used": self.rule_used,
            "test": self.test,
            "p_values": self.p_values,
            "limit": self.limit,
            "rows": self.rows,
            "physics_only": self.physics_only,
            "summary": self.summary,
            "chosen": self.chosen,
            "eligible": self.eligible,
            "stable": self.stable,
            "spread": self.spread,
            "network_needed": self.network_needed,
            "converged": self.converged,
            "unmoved": self.unmoved,
            "units": self.units,
        }

    @classmethod
    def from_dict(cls, config):
        """A `RadiusPath` from `to_dict()`'s output (without its models:
        `best_model` is `None`)."""
        # Paths saved before the paired rule chose with the relative rule,
        # and those saved before the signed-rank test with the t test.
        return cls(config["rows"], config["physics_only"], SAM.from_config(config["sam"]),
                   config["tolerance"], config.get("stable_tolerance", 0.05), config["units"], {},
                   config.get("noise_level", 2.0), rule=config.get("rule", "relative"),
                   level=config.get("level", 0.05), margin=config.get("margin", 0.0),
                   paired_test=config.get("paired_test", "t"))

    def __str__(self):
        names = list(self.summary[0]["constants"]) if self.summary else []
        heads = [f"{n} [{self.units[n]}]" if self.units.get(n) else n for n in names]
        width = max([10] + [len(h) for h in heads])
        seeds = len(self.rows) // max(len(self.rhos), 1)
        lines = [
            f"Radius path: {type(self.sam).__name__}(perturb={self.sam.perturb!r}"
            f"{', adaptive=True' if self.sam.adaptive else ''}), "
            f"{seeds} seed{'s' if seeds != 1 else ''} per radius",
            f"{'rho':>10}  {'train loss':>10}  {'val loss':>10}  {'net share':>9}  "
            + "  ".join(f"{h:>{width}}" for h in heads),
        ]

        def line(label, row, mark=""):
            cells = "  ".join(f"{row['constants'][n]:>{width}.5g}" for n in names)
            share = row.get("net_share", math.nan)
            return (
                f"{label:>10}  {row['train_loss']:>10.4g}  {row['val_loss']:>10.4g}  "
                f"{share:>9.3f}  {cells}{mark}"
            )

        if self.physics_only is not None:
            lines.append(line("physics", self.physics_only))
        for s in self.summary:
            label = "0 (plain)" if s["rho"] == 0 else f"{s['rho']:g}"
            mark = "  <- chosen" if s["rho"] == self.chosen else (
                "  (eligible)" if s["rho"] in self.eligible else "")
            lines.append(line(label, s, mark))
        cap = ", and not above the physics part alone)" if self.physics_only else ")"
        diverged = [(r["rho"], r["seed"]) for r in self.rows if not math.isfinite(r["val_loss"])]
        if self.chosen is None and len(diverged) == len(self.rows):
            lines.append(
                "chosen: none: no fit has a finite validation loss (every fit diverged), so "
                "`best_model` is None. Lower the learning rate, or scale the inputs and targets "
                "to order 1"
            )
        elif self.chosen is None:
            fits = ", ".join(f"rho = {rho:g} seed {seed}" for rho, seed in diverged)
            lines.append(
                "chosen: none: a radius with a diverged fit is not chosen, and every radius has "
                f"one (non-finite validation loss: {fits}; {len(self.rows) - len(diverged)} of "
                f"{len(self.rows)} fits are finite), so `best_model` is None. Lower the learning "
                "rate, or scale the inputs and targets to order 1"
            )
        elif not self.network_needed:
            # Every radius is above the cap: the rule fell back to the best one.
            lines.append(
                f"chosen: rho = {self.chosen} (the radius of lowest validation loss: no radius "
                "fits the validation data as well as the physics part alone)"
            )
            if self.rule_used == "paired":
                lines.append(self._p_value_line())
        elif self.rule_used == "paired":
            worse = "worse" if not self.margin else (f"worse by more than {percent(self.margin)} "
                                                     "of the gain over the physics part alone")
            lines.append(
                f"chosen: rho = {self.chosen} (largest radius not significantly {worse} than "
                f"the best: one-sided {self.test} test, Holm's correction at level "
                f"{self.level:g}{cap}")
            lines.append(self._p_value_line())
        else:
            fallback = " (no per-sample losses or standard errors for the paired rule)" if (
                self.rule == "paired") else ""
            lines.append(
                f"chosen: rho = {self.chosen} (largest radius whose validation loss is at most "
                f"{self.limit:.4g}: the best plus the larger of {percent(self.tolerance)} of its "
                f"magnitude and {self.noise_level:g} standard errors{cap}{fallback}"
            )
        if self.chosen is not None and diverged:
            fits = ", ".join(f"rho = {rho:g} seed {seed}" for rho, seed in diverged)
            lines.append(f"diverged (non-finite validation loss; a radius with one is not chosen): {fits}")
        if not self.converged:
            lowest = self._lowest_train_loss()
            lowest = f"{lowest:.4g}" if math.isfinite(lowest) else "none finite"
            lines.append(
                f"every radius fits the training data worse than the physics part alone (lowest "
                f"training loss {lowest} against {self.physics_only['train_loss']:.4g}), "
                "although the hybrid contains it (a network with zero output): the fits have not "
                "converged. Try a smaller learning rate, more epochs, or network inputs scaled "
                "to order 1"
            )
        elif not self.network_needed:
            lines.append(
                "the physics part alone fits the validation data at least as well as every "
                "radius: the network may not be needed"
            )
        if len(self.eligible) == 1 and self.refine_rhos():
            lines.append(
                f"only rho = {self.eligible[0]:g} is eligible: fit the radii "
                f"{self.refine_rhos()} to see whether the constants stay put near it"
            )
        for rho, worse, n in self.mostly_worse():
            p = self.p_values[self.rhos.index(rho)] if self.p_values else None
            rule = "" if p is None else (
                f"; the {self.test} test with Holm's correction does not reject it (p = {p:.2g})")
            lines.append(
                f"rho = {rho:g} is eligible although it is worse than the best radius on {worse} "
                f"of {n} validation points (sign test below level {self.level:g}){rule}"
            )
        for rho, p in self.worse_on_average():
            lines.append(
                f"rho = {rho:g} is eligible although its mean validation loss is higher than the "
                f"best radius's (paired t test, p = {p:.2g}): a few validation points carry a "
                "large excess"
            )
        if len(self.eligible) >= 2 and not self.probed:
            changes = ", ".join(f"{key.replace('_', ' ')} within {value:.2%}"
                                for key, value in self.fit_change.items())
            lines.append(
                f"the eligible radii barely change the fit ({changes}): constants that stay put "
                "over them are not shown to be decided by the data"
            )
        for name in names:
            if name in self.untrained:
                lines.append(
                    f"{name}: not trained (frozen, or supplied per sample through `constants=`): "
                    "its value is the one it was built with, and the path says nothing about it"
                )
            elif name in self.spread and len(self.eligible) < 2:
                # One fit has no spread to judge: "NOT stable (0.00 %)"
                # would read as a contradiction.
                lines.append(
                    f"{name}: stability unknown: only the radius {self.eligible} is eligible, "
                    "and one fit cannot show whether it stays put"
                )
            elif name in self.spread:
                verdict = "stable" if self.stable[name] else "NOT stable"
                lines.append(
                    f"{name}: {verdict} over the eligible radii {self.eligible} "
                    f"(relative spread {self.spread[name]:.2%}, threshold "
                    f"{percent(self.stable_tolerance)})"
                )
                if self.unmoved.get(name):
                    lines.append(
                        f"{name}: within {percent(UNMOVED_TOLERANCE)} of its initial value in "
                        "every eligible fit: the fits did not move it, so its agreement over the "
                        "radii shows nothing (train longer)"
                    )
        return "\n".join(lines)

    def plot(self, axes=None):
        """Constants and validation loss against the radius (matplotlib).

        Radius 0 (plain training) is drawn at the left edge of the log axis;
        the physics part alone as dashed lines.

        Args:
            axes: two matplotlib axes, or `None` for a new figure.

        Returns:
            The two axes.
        """
        plt = pyplot()
        if axes is None:
            _, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        elif np.size(axes) != 2:
            raise ValueError(
                f"`axes` must be two matplotlib axes (constants, losses), or None for a new "
                f"figure. Received: axes={axes!r}"
            )
        axes = list(np.ravel(axes))
        positive = [r for r in self.rhos if r > 0]
        zero_at = min(positive) / 3 if positive else 1.0
        x = [r if r > 0 else zero_at for r in self.rhos]
        for name in self.summary[0]["constants"]:
            y = [s["constants"][name] for s in self.summary]
            err = [s["constants_std"][name] for s in self.summary]
            line = axes[0].errorbar(x, y, yerr=err, marker="o", label=labelled(name, self.units.get(name)))
            if self.physics_only is not None:
                axes[0].axhline(self.physics_only["constants"][name], ls="--",
                                color=line[0].get_color(), alpha=0.6)
        axes[1].plot(x, [s["val_loss"] for s in self.summary], "o-", label="validation")
        axes[1].plot(x, [s["train_loss"] for s in self.summary], "s:", label="training")
        if self.physics_only is not None:
            axes[1].axhline(self.physics_only["val_loss"], ls="--", color="gray",
                            label="physics only (validation)")
        for ax in axes:
            ax.set_xscale("log")
            if self.chosen is not None:
                ax.axvline(self.chosen if self.chosen > 0 else zero_at, color="k", lw=0.8)
            ax.set_xlabel("SAM radius rho (leftmost point: plain training)")
        axes[0].set_ylabel("constant (in its unit)")
        axes[1].set_yscale("log")
        axes[1].set_ylabel("loss")
        axes[0].legend()
        axes[1].legend()
        return axes


def _relative_spread(values):
    """`(max - min) / |median|` of a list of numbers."""
    values = np.asarray(values, "float64")
    return float((values.max() - values.min()) / max(abs(float(np.median(values))), 1e-30))

