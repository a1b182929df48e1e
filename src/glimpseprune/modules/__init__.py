from .glimpse import GlimpseToken
from .vip import VIP

__all__ = ["GlimpseToken", "VIP"]
