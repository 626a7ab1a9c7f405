"""Hydra loads plugins only from the ``hydra_plugins`` package: this names galda's Optuna sweeper
there (``hydra/sweeper=galda_optuna``). The implementation is ``galda.hpo``."""

from galda.hpo import OptunaSweeper


class GaldaOptunaSweeper(OptunaSweeper):
    """Label-free Optuna search over galda jobs (see ``galda.hpo``)."""
