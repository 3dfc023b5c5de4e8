"""Scoring a blind drill, after AIOpsLab/OpenRCA: localisation, diagnosis, speed, help, guesses.

Pure functions, so the rules are unit-tested and a trainer can read them in one screen:

- right service 50 points, and then the right fault kind 30 more (a right kind on the wrong
  service is not a diagnosis: 0);
- speed, up to 20 points, only for a right service: full marks within ``FAST_SECONDS`` of the
  first page (or of the fault, when nothing paged), falling linearly to 0 at ``SLOW_SECONDS``;
- every hint costs what the drill file says;
- every wrong guess before the final one costs ``WRONG_GUESS_COST``: a shotgun of answers
  scores less than one considered answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SERVICE_POINTS = 50
KIND_POINTS = 30
SPEED_POINTS = 20
FAST_SECONDS = 120.0
SLOW_SECONDS = 900.0
WRONG_GUESS_COST = 15
MAX_GUESSES = 3


@dataclass(frozen=True)
class Guess:
    service: str
    kind: str
    at: float  # unix time


@dataclass
class Score:
    total: int
    service_right: bool
    kind_right: bool
    time_to_answer: float | None
    time_to_detect: float | None
    hints_used: int
    hint_cost: int
    wrong_guesses: int
    breakdown: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def normalise(value: str) -> str:
    return value.strip().lower().replace("-", "_")


def is_right(guess: Guess, service: str, kind: str) -> tuple[bool, bool]:
    """(service right, kind right); a kind only counts together with the right service."""
    service_ok = normalise(guess.service) == normalise(service)
    return service_ok, service_ok and normalise(guess.kind) == normalise(kind)


def speed_points(time_to_answer: float | None) -> float:
    if time_to_answer is None:
        return 0.0
    if time_to_answer <= FAST_SECONDS:
        return float(SPEED_POINTS)
    if time_to_answer >= SLOW_SECONDS:
        return 0.0
    return SPEED_POINTS * (SLOW_SECONDS - time_to_answer) / (SLOW_SECONDS - FAST_SECONDS)


def score(
    guesses: list[Guess],
    service: str,
    kind: str,
    clock_start: float,
    time_to_detect: float | None = None,
    hint_costs: list[int] | None = None,
) -> Score:
    """Score the last guess; earlier (wrong) guesses and hints are deducted.

    ``clock_start`` is when the trainee's clock starts: the first page, or the fault start
    when nothing paged (or the drill start, for the no-incident drill).
    """
    if not guesses:
        raise ValueError("no answer to score")
    final = guesses[-1]
    service_ok, kind_ok = is_right(final, service, kind)
    tta = max(0.0, final.at - clock_start)
    costs = list(hint_costs or [])
    wrong = sum(1 for g in guesses[:-1] if is_right(g, service, kind) != (True, True))
    parts = {
        "service": float(SERVICE_POINTS if service_ok else 0),
        "kind": float(KIND_POINTS if kind_ok else 0),
        "speed": round(speed_points(tta) if service_ok else 0.0, 1),
        "hints": -float(sum(costs)),
        "wrong_guesses": -float(WRONG_GUESS_COST * wrong),
    }
    total = max(0, min(100, round(sum(parts.values()))))
    return Score(
        total=total,
        service_right=service_ok,
        kind_right=kind_ok,
        time_to_answer=round(tta, 1),
        time_to_detect=None if time_to_detect is None else round(time_to_detect, 1),
        hints_used=len(costs),
        hint_cost=sum(costs),
        wrong_guesses=wrong,
        breakdown=parts,
    )
