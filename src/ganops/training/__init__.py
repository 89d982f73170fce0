"""The train stage: the GAN loop, its losses, augmentation, schedules, checkpoints and torch device set-up."""
