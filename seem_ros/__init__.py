"""seem_ros: SEEM (Segment Everything Everywhere All at Once) for ROS 2 robots."""

from pkgutil import extend_path

# The generated seem_ros.msg / seem_ros.srv may be installed in another `seem_ros` directory on sys.path
# (a venv's site-packages while the sources are used from a checkout): make both one package.
__path__ = extend_path(__path__, __name__)
