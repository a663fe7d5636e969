"""Every architecture a model card may name, mapped to the function that builds it from arch_config."""
from engine.checkpoints import register_architecture
from engine.rl.dqn import build_qnet
from engine.text.chargpt import build_chargpt
from engine.text.charlstm import build_charlstm
from engine.text.classify import build_text_classifier
from engine.vision.hub_backbone import build_hub_probe
from engine.vision.nets import build_resnet, build_resnet9

register_architecture("resnet")(build_resnet)
register_architecture("resnet9")(build_resnet9)
register_architecture("qnet")(build_qnet)
register_architecture("chargpt")(build_chargpt)
register_architecture("charlstm")(build_charlstm)
register_architecture("minilm-classifier")(build_text_classifier)
register_architecture("hub-probe")(build_hub_probe)
