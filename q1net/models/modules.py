"""LightningModules for the paper's three heads (Q1Regressor, Q1Classifier, confidence-aware Q1Net) and its Table 2 peers.

Each wraps a plain `Q1Network` (which never imports Lightning), owns its loss,
and shares one `_step` for train/val/test. Validation also runs the full
block-sampling predictor on a few whole validation images, so the dashboard
shows the number users care about (image-level MAE), not only patch MAE.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import WandbLogger

from q1net import __version__
from q1net.data.geometry import GEOMETRY
from q1net.data.jpeg import QUALITY_MAX, QUALITY_MIN
from q1net.nets.peers import PeerNetwork, centre_crop
from q1net.nets.q1net import QUALITY_SCALE, Q1NetConfig, Q1Network
from q1net.plots import confusion_image, confusion_matrix, zoom_patch
from q1net.predictor.inference import BLOCKS_DEFAULT, TAU_DEFAULT, TAU_GRID
from q1net.predictor.program import Q1Program, cut_regions
from q1net.predictor.rules import vote
from q1net.predictor.weights import WeightsError, load_net_file

Batch = tuple[torch.Tensor, torch.Tensor]  # (B, 3, P, P) uint8 patches, (B,) int qualities


def optimizer_config(module: LightningModule, optimizer: OptimizerCallable, scheduler: LRSchedulerCallable | None) -> dict:
    """What `configure_optimizers` returns: the optimiser, and the scheduler stepped every training step."""
    built = optimizer(module.parameters())
    if scheduler is None:
        return {"optimizer": built}
    return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler(built), "interval": "step"}}


def log_patch_scores(module: LightningModule, stage: str, loss: torch.Tensor, predicted: torch.Tensor, quality: torch.Tensor) -> None:
    """Loss and patch MAE: per step in training, per epoch (averaged over ranks) otherwise."""
    on_step = stage == "train"
    for name, value in (("loss", loss), ("patch_mae", (predicted - quality).abs().mean())):
        module.log(
            f"{stage}/{name}", value, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=len(quality), sync_dist=not on_step
        )


def log_image_scores(module: LightningModule, true: list[int], predicted: list[float]) -> np.ndarray:
    """Image-level MAE and SDE (std of |e|, as the published evaluator) of the validation images; the errors."""
    errors = np.abs(np.array(predicted) - np.array(true))
    module.log("val/image_mae", float(errors.mean()), prog_bar=True, sync_dist=True)
    module.log("val/image_sde", float(errors.std()), sync_dist=True)
    return errors


class QualityModule(LightningModule):
    """Shared training logic; subclasses fix the head and define `loss`."""

    config: Q1NetConfig

    def __init__(
        self,
        k: int = 8,
        bottlenecks: bool = True,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        tau: float = TAU_DEFAULT,
        blocks: int = BLOCKS_DEFAULT,
        gallery_size: int = 16,
        compile: bool = False,
        init_weights: str | None = None,
        identity_bottlenecks: bool = True,
    ) -> None:
        """`init_weights` starts from a trained net (safetensors or .ckpt) of the same architecture: fine-tuning.

        `identity_bottlenecks` starts a fresh net's bottlenecks as the identity (Q1Network.start_bottlenecks_as_identity);
        False is PyTorch's default init, what the first shipped weights were trained from.
        """
        super().__init__()
        self.save_hyperparameters()
        self.net = Q1Network(Q1NetConfig(k=k, alpha=self.config.alpha, bottlenecks=bottlenecks, head=self.config.head))
        if init_weights is not None:
            self._load_initial(init_weights)
        elif identity_bottlenecks:
            self.net.start_bottlenecks_as_identity()
        self.optimizer, self.scheduler = optimizer, scheduler
        self.tau, self.blocks, self.gallery_size = tau, blocks, gallery_size
        # compiled for training steps only: fixed batch shape, about twice as fast on CPU
        self._train_forward = torch.compile(self.net.forward) if compile else self.net.forward
        self._gallery: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def _load_initial(self, path: str) -> None:
        loaded = load_net_file(path)
        if loaded.net.config != self.net.config:
            raise WeightsError(f"{path}: init_weights hold {loaded.net.config}, this model is {self.net.config}")
        self.net.load_state_dict(loaded.net.state_dict())

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches.float())

    def loss(self, outputs: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        patches, quality = batch
        outputs = self._train_forward(patches.float()) if stage == "train" else self(patches)
        loss = self.loss(outputs, quality.float())
        predicted, confidence = self.net.quality_confidence(outputs.detach())
        log_patch_scores(self, stage, loss, predicted, quality)
        if stage == "val" and self._gallery is None:
            n = self.gallery_size
            self._gallery = (
                patches[:n].cpu(),
                quality[:n].cpu(),
                predicted[:n].cpu(),
                None if confidence is None else confidence[:n].cpu(),
            )
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> dict:
        return optimizer_config(self, self.optimizer, self.scheduler)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # self-describing checkpoints: enough to rebuild the net without this class
        checkpoint["q1net"] = {"version": __version__, "net": self.net.config.as_dict(), "geometry": GEOMETRY.as_dict(), "tau": self.tau}

    # ---- image-level validation ------------------------------------------------------

    def on_validation_epoch_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        images = getattr(datamodule, "image_val_set", None)
        if self.trainer.sanity_checking or not images:
            self._gallery = None
            return
        program = Q1Program(self.net, self.tau, blocks=self.blocks).to(self.device)
        scores = []
        for decoded, _ in images:
            regions, rows, cols = (torch.from_numpy(a) for a in cut_regions(decoded, per_side=program.per_side))
            scores.append(program.network_alone(regions.to(self.device), rows.to(self.device), cols.to(self.device)))
        true = np.array([quality for _, quality in images])
        predicted = np.array([float(vote(*score, self.tau).quality) for score in scores])
        log_image_scores(self, true, predicted)
        if scores[0][1] is not None:
            self._log_confidence_scores(scores, true, datamodule.solid_val_set)
        self._log_pictures(true, predicted)
        self._gallery = None

    def _log_confidence_scores(self, scores: list, true: np.ndarray, solid: torch.Tensor | None) -> None:
        """The image MAE at the best tau of TAU_GRID (runs with other confidence scales compare fairly), and the
        share of solid-colour patches above tau (the confidence head should distrust every one of them)."""
        by_tau = {
            tau: np.mean([abs(float(vote(*score, tau).quality) - t) for score, t in zip(scores, true, strict=True)]) for tau in TAU_GRID
        }
        best = min(by_tau, key=by_tau.get)
        self.log("val/image_mae_best_tau", float(by_tau[best]), sync_dist=True)
        self.log("val/best_tau", float(best), sync_dist=True)
        if solid is not None:
            _, confidence = self.net.quality_confidence(self(solid.to(self.device)))
            self.log("val/solid_above_tau", float((confidence > self.tau).float().mean()), sync_dist=True)

    def _log_pictures(self, true: np.ndarray, predicted: np.ndarray) -> None:
        loggers = [logger for logger in self.loggers if isinstance(logger, WandbLogger)]
        if not loggers or self._gallery is None:
            return
        patches, quality, patch_quality, patch_confidence = self._gallery
        confidences = [None] * len(quality) if patch_confidence is None else patch_confidence.tolist()
        captions = [
            f"true {int(q)} pred {p:.1f}" + ("" if c is None else f" conf {c:.1f}")
            for q, p, c in zip(quality.tolist(), patch_quality.tolist(), confidences, strict=True)
        ]
        gallery = [zoom_patch(p) for p in patches.numpy()]
        matrix = confusion_image(confusion_matrix(true, predicted), f"validation images, step {self.global_step}")
        for logger in loggers:
            logger.log_image("val/confusion_matrix", [matrix], step=self.global_step)
            logger.log_image("val/patches", gallery, step=self.global_step, caption=captions)


class Q1Regressor(QualityModule):
    """Q1-Regressor: one sigmoid output trained with L1 on the quality."""

    config = Q1NetConfig(alpha=1)

    def loss(self, outputs: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(outputs[:, 0], quality)


class Q1Net(QualityModule):
    """Confidence-aware Q1Net: L = |q^ - q| + lambda |c^ - c|, c = 100 - |q - q^| (eq. 1, 5).

    The confidence target comes from the current prediction and is detached:
    the confidence head learns how right the quality head is, and no gradient
    flows back through the target into the quality head. `error_scale` s makes
    the target 100 - s |q - q^| (floored at 0): 1 is the paper's eq. 1; larger
    values spread confidences over more of 0..100 (a study candidate, docs/TRAINING.md).
    """

    config = Q1NetConfig(alpha=2)

    def __init__(self, *args: object, lam: float = 0.5, error_scale: float = 1.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.lam, self.error_scale = lam, error_scale

    def loss(self, outputs: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        confidence, predicted = outputs[:, 0], outputs[:, 1]
        target_confidence = (QUALITY_SCALE - self.error_scale * (quality - predicted).abs()).clamp(min=0).detach()
        return (predicted - quality).abs().mean() + self.lam * (confidence - target_confidence).abs().mean()


class Q1Classifier(QualityModule):
    """Q1-Classifier: 100-way softmax with cross-entropy, with the paper's growing-output curriculum as an option.

    With `curriculum = [2, 4, 10, 25, 50, 100]` and `curriculum_steps = S`, the
    first S steps train a 2-class problem (qualities binned in two halves), the
    next S a 4-class one, and so on. A coarse class's probability is the sum of
    its member levels' probabilities, so the 100-unit head grows from easy to
    hard without swapping layers or optimiser state.
    """

    config = Q1NetConfig(alpha=QUALITY_MAX - QUALITY_MIN + 1, head="logits")

    def __init__(self, *args: object, curriculum: list[int] | None = None, curriculum_steps: int = 1000, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if curriculum and (sorted(curriculum) != curriculum or curriculum[-1] != self.config.alpha):
            raise ValueError(f"curriculum must grow and end at {self.config.alpha} classes, got {curriculum}")
        self.curriculum, self.curriculum_steps = curriculum or [self.config.alpha], curriculum_steps

    def classes_now(self) -> int:
        stage = min(self.global_step // self.curriculum_steps, len(self.curriculum) - 1) if self.training else -1
        return self.curriculum[stage]

    def loss(self, outputs: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        levels, classes = self.config.alpha, self.classes_now()
        level = quality.long() - QUALITY_MIN
        if classes == levels:
            return F.cross_entropy(outputs, level)
        bins = torch.arange(levels, device=outputs.device) * classes // levels  # level -> coarse class
        coarse = torch.full((len(outputs), classes), float("-inf"), device=outputs.device, dtype=outputs.dtype)
        coarse = coarse.scatter_reduce(1, bins.expand(len(outputs), -1), outputs, reduce="amax")  # stabiliser
        log_sum = torch.zeros_like(coarse).index_add_(1, bins, (outputs - coarse[:, bins]).exp()).log() + coarse
        return F.nll_loss(log_sum - log_sum.logsumexp(dim=1, keepdim=True), level * classes // levels)


class PeerRegressor(LightningModule):
    """A Table 2 peer (q1net.nets.peers) trained with L1 on the quality of whole crops (DataModule `crop_input`)."""

    def __init__(
        self,
        arch: str = "mobilenet_v2",
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = PeerNetwork(arch)
        self.optimizer, self.scheduler = optimizer, scheduler

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net(crops.float())

    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        crops, quality = batch
        predicted = self(crops)[:, 0]
        loss = F.l1_loss(predicted, quality.float())
        log_patch_scores(self, stage, loss, predicted.detach(), quality.float())
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> dict:
        return optimizer_config(self, self.optimizer, self.scheduler)

    @torch.no_grad()
    def predict_pixels(self, images: list[np.ndarray]) -> np.ndarray:
        """Quality of each decoded (H, W, 3) uint8 image from its MCU-aligned centre crop, in one batch."""
        crops = np.stack([centre_crop(image, self.net.input_size) for image in images])
        return self(torch.from_numpy(crops).to(self.device))[:, 0].cpu().numpy()

    def on_validation_epoch_end(self) -> None:
        images = getattr(getattr(self.trainer, "datamodule", None), "image_val_set", None)
        if self.trainer.sanity_checking or not images:
            return
        predicted = [float(self.predict_pixels([decoded])[0]) for decoded, _ in images]
        log_image_scores(self, [quality for _, quality in images], predicted)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["q1net"] = {"version": __version__, "peer": self.net.arch}
