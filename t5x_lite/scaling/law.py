"""The Chinchilla loss law L(N, D) = E + A / N^alpha + B / D^beta and its compute-optimal
allocation of a FLOP budget C = k N D between parameters N and training tokens D.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LossLaw:
    """Final loss of a model of N parameters trained on D tokens: E + A/N^alpha + B/D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N, D):
        """The law's loss; N and D broadcast as numpy arrays."""
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    @property
    def optimal_exponent(self) -> float:
        """a in N* ∝ C^a: beta / (alpha + beta); D* ∝ C^(1 - a)."""
        return self.beta / (self.alpha + self.beta)

    def optimal_allocation(self, C, flops_per_param_token: float = 6.0):
        """(N*, D*) minimising the loss subject to C = k N D, with k = `flops_per_param_token`.

        N* = G (C/k)^a with G = (alpha A / (beta B))^(1/(alpha+beta)), and D* = C / (k N*).
        """
        C = np.asarray(C, dtype=float)
        k = flops_per_param_token
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        N = G * (C / k) ** self.optimal_exponent
        return N, C / (k * N)

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


# Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", approach 3.
CHINCHILLA = LossLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
# Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt" (Epoch AI): the
# same parametric fit redone on the data read back from Chinchilla's figures.
EPOCH_REFIT = LossLaw(E=1.82, A=482.0, B=2085.0, alpha=0.35, beta=0.37)


def predict(law: LossLaw, C, flops_per_param_token: float = 6.0):
    """(N*, D*, loss) at the compute-optimal allocation of budget C under `law`."""
    N, D = law.optimal_allocation(C, flops_per_param_token)
    return N, D, law.loss(N, D)
