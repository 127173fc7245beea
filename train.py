"""Train one configuration: ``python train.py optimizer=fam position=quaternion attention=integrated``."""

from famlab.train import main

if __name__ == "__main__":
    main()
