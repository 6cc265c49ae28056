"""An IRC gateway to zchat: IRC clients in, one zchat client per IRC connection out."""
