from omegaconf import DictConfig
def run(cfg: DictConfig):
    print("curate", cfg.input)
