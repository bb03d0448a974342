"""The ingredient catalogue: every ingredient has one fixed visual signature and one way of being written.

A signature (shape, colour, secondary colour, size, piece count) never changes between recipes, so a model
can learn "small red circles with a highlight" = cherry tomatoes. Sizes are in pixels of a 128 px photo and
kept large enough (>= 5 px) to survive the downscale to 64 px that tiny models train at.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]

# Categories decide where an ingredient may appear (see dishes.py).
CATEGORIES = (
    "pasta", "grain", "noodle", "leafy", "bread", "protein", "veg", "herb", "cheese", "fruit", "nut",
    "sweet", "sauce", "pantry",
)

SHAPES = (
    "circle", "half", "disk", "ring", "strand", "tube", "bowtie", "leaf", "floret", "cube", "strip", "grain",
    "wedge", "crescent", "blob", "dots", "egg", "oval", "star", "drizzle", "fill", "none",
)


@dataclass(frozen=True)
class Ingredient:
    name: str  # bare name, as Recipe1M's detected ingredients (det_ingrs) write it
    title: str  # how a recipe title names it
    category: str
    shape: str  # one of SHAPES; "fill" = a sauce/base colour, "none" = invisible pantry item
    color: RGB
    color2: RGB  # highlight / inner / secondary colour
    size: float  # piece size in px at 128 px
    count: int  # pieces drawn at amount 1.0
    unit: str  # "cup", "tbsp", "tsp", "lb", "oz", "g", "" (counted), "clove", "can", "slice", "bunch"
    qty: float  # quantity written at amount 1.0
    preps: tuple[str, ...] = ()  # preparation notes ("halved"); one is picked per recipe line
    weight: float = 1.0  # how common: the sampler's weight, rare ingredients far below 1

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"ingredient {self.name!r}: unknown category {self.category!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"ingredient {self.name!r}: unknown shape {self.shape!r}")


def _i(name: str, title: str, cat: str, shape: str, color: RGB, color2: RGB, size: float, count: int,
       unit: str, qty: float, preps: tuple[str, ...] = (), weight: float = 1.0) -> Ingredient:
    return Ingredient(name, title, cat, shape, color, color2, size, count, unit, qty, preps, weight)


_CAT: list[Ingredient] = [
    # pasta (the base of a pasta dish: drawn as many pieces filling the plate)
    _i("spaghetti", "Spaghetti", "pasta", "strand", (236, 208, 120), (250, 230, 160), 28, 55, "oz", 12),
    _i("fettuccine", "Fettuccine", "pasta", "strand", (230, 196, 110), (245, 220, 150), 30, 40, "oz", 12,
       weight=0.7),
    _i("penne", "Penne", "pasta", "tube", (232, 196, 100), (200, 160, 70), 10, 45, "oz", 12),
    _i("farfalle", "Farfalle", "pasta", "bowtie", (238, 206, 110), (210, 170, 80), 10, 36, "oz", 12, weight=0.6),
    # grains / noodles / breads
    _i("rice", "Rice", "grain", "grain", (246, 244, 236), (225, 222, 210), 4, 160, "cup", 1.5,
       ("cooked",)),
    _i("quinoa", "Quinoa", "grain", "grain", (222, 200, 150), (200, 170, 120), 3, 180, "cup", 1, ("rinsed",),
       weight=0.7),
    _i("rice noodles", "Rice Noodle", "noodle", "strand", (244, 240, 228), (255, 255, 250), 26, 45, "oz", 8),
    _i("egg noodles", "Noodle", "noodle", "strand", (240, 200, 90), (255, 225, 130), 26, 45, "oz", 8),
    _i("lettuce", "Lettuce", "leafy", "leaf", (150, 200, 90), (190, 225, 130), 20, 14, "head", 1,
       ("torn", "chopped")),
    _i("spinach", "Spinach", "leafy", "leaf", (40, 110, 40), (70, 140, 60), 13, 18, "cup", 3,
       ("washed", "chopped")),
    _i("arugula", "Arugula", "leafy", "leaf", (70, 140, 50), (100, 170, 70), 10, 24, "cup", 3, weight=0.7),
    _i("kale", "Kale", "leafy", "leaf", (30, 80, 50), (60, 110, 70), 15, 14, "cup", 3,
       ("stems removed", "chopped"), weight=0.6),
    _i("bread", "Bread", "bread", "fill", (225, 180, 110), (170, 110, 50), 0, 0, "slice", 2, ("toasted",)),
    _i("whole wheat bread", "Whole Wheat", "bread", "fill", (175, 120, 70), (120, 75, 40), 0, 0, "slice", 2,
       ("toasted",), weight=0.6),
    _i("tortillas", "Taco", "bread", "fill", (240, 215, 150), (215, 180, 110), 0, 0, "", 3, ("warmed",)),
    # proteins
    _i("chicken breast", "Chicken", "protein", "cube", (226, 196, 150), (190, 150, 100), 11, 10, "lb", 1,
       ("cut into cubes", "cubed")),
    _i("shrimp", "Shrimp", "protein", "crescent", (245, 140, 110), (255, 200, 180), 12, 8, "lb", 1,
       ("peeled and deveined",)),
    _i("salmon", "Salmon", "protein", "cube", (245, 125, 80), (255, 190, 160), 14, 6, "lb", 1,
       ("skinned", "cut into chunks")),
    _i("ground beef", "Beef", "protein", "blob", (120, 70, 45), (90, 50, 30), 7, 24, "lb", 1),
    _i("beef sirloin", "Steak", "protein", "strip", (130, 60, 45), (170, 90, 70), 14, 9, "lb", 1,
       ("thinly sliced",), weight=0.7),
    _i("bacon", "Bacon", "protein", "strip", (180, 60, 50), (240, 200, 180), 18, 5, "slice", 6,
       ("cooked and crumbled", "chopped")),
    _i("tofu", "Tofu", "protein", "cube", (245, 240, 220), (220, 210, 180), 11, 9, "oz", 14,
       ("pressed and cubed",)),
    _i("eggs", "Egg", "protein", "egg", (250, 250, 245), (250, 185, 30), 15, 1, "", 2,
       ("hard-boiled and halved", "fried")),
    _i("meatballs", "Meatball", "protein", "circle", (115, 65, 40), (150, 95, 65), 13, 6, "", 12),
    _i("chickpeas", "Chickpea", "protein", "circle", (222, 180, 110), (240, 210, 150), 6, 22, "can", 1,
       ("drained and rinsed",)),
    _i("black beans", "Black Bean", "protein", "circle", (45, 35, 40), (90, 80, 90), 6, 22, "can", 1,
       ("drained and rinsed",)),
    _i("pepperoni", "Pepperoni", "protein", "disk", (175, 45, 35), (120, 25, 20), 11, 12, "oz", 4,
       ("sliced",)),
    _i("ham", "Ham", "protein", "strip", (240, 160, 160), (255, 200, 200), 14, 6, "oz", 6, ("diced",)),
    _i("sausage", "Sausage", "protein", "disk", (150, 85, 60), (190, 130, 100), 10, 10, "oz", 8,
       ("sliced",), weight=0.8),
    _i("turkey", "Turkey", "protein", "strip", (235, 205, 175), (250, 230, 210), 16, 5, "oz", 6,
       ("sliced",), weight=0.7),
    # vegetables
    _i("cherry tomatoes", "Tomato", "veg", "circle", (215, 35, 30), (255, 160, 150), 8, 10, "cup", 1,
       ("halved",)),
    _i("tomatoes", "Tomato", "veg", "cube", (210, 45, 35), (240, 120, 100), 8, 12, "", 2,
       ("diced", "chopped")),
    _i("cucumber", "Cucumber", "veg", "disk", (60, 130, 50), (215, 235, 180), 10, 10, "", 1, ("sliced",)),
    _i("carrots", "Carrot", "veg", "disk", (245, 130, 25), (255, 170, 70), 8, 14, "", 2,
       ("peeled and sliced",)),
    _i("red bell pepper", "Red Pepper", "veg", "strip", (220, 30, 35), (250, 90, 80), 12, 10, "", 1,
       ("sliced", "cut into strips")),
    _i("green bell pepper", "Green Pepper", "veg", "strip", (50, 140, 40), (100, 180, 80), 12, 10, "", 1,
       ("sliced",), weight=0.7),
    _i("yellow bell pepper", "Yellow Pepper", "veg", "strip", (250, 205, 30), (255, 235, 110), 12, 10, "", 1,
       ("sliced",), weight=0.5),
    _i("red onion", "Red Onion", "veg", "ring", (150, 60, 120), (230, 200, 230), 11, 7, "", 1,
       ("thinly sliced",)),
    _i("broccoli", "Broccoli", "veg", "floret", (40, 120, 40), (80, 160, 60), 13, 7, "cup", 2,
       ("cut into florets",)),
    _i("cauliflower", "Cauliflower", "veg", "floret", (240, 236, 215), (220, 210, 180), 13, 7, "cup", 2,
       ("cut into florets",), weight=0.7),
    _i("mushrooms", "Mushroom", "veg", "half", (180, 150, 120), (120, 90, 70), 11, 9, "oz", 8, ("sliced",)),
    _i("zucchini", "Zucchini", "veg", "disk", (70, 120, 40), (230, 235, 190), 11, 9, "", 1, ("sliced",)),
    _i("corn", "Corn", "veg", "grain", (250, 210, 40), (255, 235, 120), 5, 40, "cup", 1, ("kernels",)),
    _i("peas", "Pea", "veg", "circle", (110, 180, 60), (170, 220, 110), 5, 30, "cup", 1, ("frozen",)),
    _i("avocado", "Avocado", "veg", "crescent", (170, 200, 80), (60, 90, 30), 14, 5, "", 1,
       ("sliced", "diced")),
    _i("black olives", "Olive", "veg", "ring", (35, 30, 35), (90, 80, 80), 7, 12, "cup", 0.5, ("sliced",)),
    _i("green beans", "Green Bean", "veg", "strip", (70, 150, 50), (110, 190, 80), 16, 10, "cup", 2,
       ("trimmed",), weight=0.8),
    _i("bean sprouts", "Bean Sprout", "veg", "strand", (245, 245, 225), (230, 230, 170), 10, 24, "cup", 1,
       weight=0.6),
    _i("purple cabbage", "Cabbage", "veg", "strand", (130, 50, 120), (200, 150, 200), 12, 24, "cup", 1,
       ("shredded",), weight=0.8),
    _i("eggplant", "Eggplant", "veg", "cube", (80, 40, 90), (225, 215, 170), 11, 9, "", 1, ("cubed",),
       weight=0.7),
    _i("sweet potato", "Sweet Potato", "veg", "cube", (240, 140, 50), (250, 180, 100), 11, 9, "", 1,
       ("peeled and cubed",)),
    _i("potatoes", "Potato", "veg", "cube", (235, 210, 140), (250, 235, 180), 11, 9, "", 2,
       ("peeled and cubed",)),
    _i("jalapeno", "Jalapeno", "veg", "ring", (60, 140, 40), (200, 220, 150), 8, 8, "", 1, ("sliced",),
       weight=0.7),
    _i("asparagus", "Asparagus", "veg", "strip", (90, 140, 60), (60, 100, 40), 22, 6, "bunch", 1,
       ("trimmed",), weight=0.6),
    _i("pineapple", "Pineapple", "fruit", "cube", (250, 215, 60), (255, 240, 150), 10, 9, "cup", 1,
       ("diced",), weight=0.6),
    # herbs (small, drawn last, on top)
    _i("basil", "Basil", "herb", "leaf", (50, 140, 40), (90, 180, 70), 8, 8, "cup", 0.25, ("fresh", "torn")),
    _i("parsley", "Parsley", "herb", "dots", (60, 130, 40), (90, 160, 60), 6, 12, "tbsp", 2, ("chopped",)),
    _i("cilantro", "Cilantro", "herb", "leaf", (80, 160, 60), (120, 200, 90), 6, 12, "cup", 0.25,
       ("chopped",)),
    _i("scallions", "Scallion", "herb", "ring", (120, 190, 80), (230, 245, 210), 6, 14, "", 3, ("sliced",)),
    _i("mint", "Mint", "herb", "leaf", (90, 180, 90), (140, 215, 130), 8, 6, "tbsp", 2, ("fresh",)),
    # cheese
    _i("parmesan", "Parmesan", "cheese", "dots", (250, 240, 200), (230, 215, 160), 6, 16, "cup", 0.5,
       ("grated",)),
    _i("mozzarella", "Mozzarella", "cheese", "disk", (252, 250, 240), (240, 235, 215), 13, 7, "oz", 8,
       ("sliced", "torn")),
    _i("feta", "Feta", "cheese", "cube", (250, 250, 245), (225, 225, 215), 8, 10, "oz", 4, ("crumbled",)),
    _i("cheddar", "Cheddar", "cheese", "strand", (250, 160, 30), (255, 200, 90), 9, 20, "cup", 1,
       ("shredded",)),
    # fruit
    _i("strawberries", "Strawberry", "fruit", "half", (220, 30, 50), (255, 150, 150), 11, 7, "cup", 1,
       ("hulled and halved",)),
    _i("blueberries", "Blueberry", "fruit", "circle", (60, 60, 140), (130, 130, 200), 7, 14, "cup", 0.5),
    _i("raspberries", "Raspberry", "fruit", "circle", (200, 30, 80), (240, 100, 140), 8, 10, "cup", 0.5,
       weight=0.7),
    _i("banana", "Banana", "fruit", "disk", (250, 235, 160), (225, 200, 110), 10, 9, "", 1, ("sliced",)),
    _i("mango", "Mango", "fruit", "cube", (255, 170, 30), (255, 210, 90), 10, 9, "", 1, ("diced",)),
    _i("kiwi", "Kiwi", "fruit", "disk", (130, 190, 40), (40, 40, 30), 11, 6, "", 2, ("peeled and sliced",),
       weight=0.7),
    _i("lime", "Lime", "fruit", "wedge", (100, 180, 40), (200, 230, 140), 12, 2, "", 1, ("cut into wedges",)),
    _i("lemon", "Lemon", "fruit", "wedge", (250, 225, 50), (255, 245, 170), 12, 2, "", 1, ("cut into wedges",)),
    # nuts / sweet toppings
    _i("almonds", "Almond", "nut", "oval", (200, 150, 100), (170, 115, 70), 7, 10, "cup", 0.25,
       ("sliced", "toasted")),
    _i("walnuts", "Walnut", "nut", "blob", (150, 100, 60), (110, 70, 40), 8, 9, "cup", 0.25, ("chopped",)),
    _i("cashews", "Cashew", "nut", "crescent", (235, 205, 150), (250, 230, 190), 8, 9, "cup", 0.25,
       ("roasted",), weight=0.7),
    _i("sesame seeds", "Sesame", "nut", "dots", (245, 235, 210), (220, 200, 160), 4, 24, "tbsp", 1,
       ("toasted",)),
    _i("chocolate chips", "Chocolate", "sweet", "circle", (70, 40, 25), (110, 70, 50), 6, 16, "cup", 0.5),
    _i("granola", "Granola", "sweet", "blob", (200, 150, 80), (160, 110, 50), 7, 14, "cup", 0.5),
    _i("honey", "Honey", "sweet", "drizzle", (230, 160, 30), (250, 200, 80), 3, 3, "tbsp", 2),
    _i("whipped cream", "Cream", "sweet", "blob", (255, 253, 245), (235, 232, 225), 14, 3, "cup", 0.5),
    _i("croutons", "Crouton", "bread", "cube", (215, 160, 80), (180, 120, 50), 9, 9, "cup", 1),
    # rare long tail: low sampling weight, but as distinctive as the rest
    _i("dragon fruit", "Dragon Fruit", "fruit", "disk", (255, 255, 250), (20, 20, 20), 12, 6, "", 1,
       ("cubed",), weight=0.08),
    _i("pomegranate seeds", "Pomegranate", "fruit", "circle", (180, 10, 40), (250, 90, 110), 5, 20, "cup",
       0.5, weight=0.12),
    _i("figs", "Fig", "fruit", "half", (110, 40, 80), (235, 110, 120), 12, 5, "", 4, ("quartered",),
       weight=0.08),
    _i("starfruit", "Starfruit", "fruit", "star", (245, 215, 60), (255, 240, 150), 12, 5, "", 1, ("sliced",),
       weight=0.06),
    _i("okra", "Okra", "veg", "star", (90, 150, 60), (200, 230, 160), 8, 10, "cup", 1, ("sliced",),
       weight=0.08),
    _i("romanesco", "Romanesco", "veg", "floret", (160, 210, 60), (200, 235, 110), 13, 6, "", 1,
       ("cut into florets",), weight=0.06),
    _i("edamame", "Edamame", "veg", "circle", (100, 170, 50), (150, 210, 90), 6, 18, "cup", 1, ("shelled",),
       weight=0.3),
    _i("capers", "Caper", "veg", "circle", (90, 110, 50), (140, 160, 90), 4, 20, "tbsp", 2, ("drained",),
       weight=0.15),
    _i("pine nuts", "Pine Nut", "nut", "oval", (240, 220, 170), (225, 200, 140), 5, 16, "tbsp", 3,
       ("toasted",), weight=0.12),
    _i("pickled ginger", "Ginger", "veg", "strip", (250, 170, 170), (255, 210, 210), 12, 6, "tbsp", 2,
       weight=0.07),
    _i("radishes", "Radish", "veg", "disk", (210, 40, 80), (250, 245, 245), 9, 9, "", 4, ("thinly sliced",),
       weight=0.15),
    _i("beets", "Beet", "veg", "cube", (130, 20, 60), (170, 40, 90), 10, 9, "", 2, ("roasted and cubed",),
       weight=0.12),
    _i("blackberries", "Blackberry", "fruit", "circle", (40, 20, 50), (90, 60, 110), 9, 9, "cup", 0.5,
       weight=0.1),
    _i("coconut flakes", "Coconut", "sweet", "strip", (255, 255, 250), (235, 230, 215), 8, 12, "cup", 0.25,
       weight=0.12),
    _i("mandarin oranges", "Mandarin", "fruit", "crescent", (255, 140, 20), (255, 190, 90), 10, 8, "can", 1,
       ("drained",), weight=0.08),
    # sauces and bases: a fill colour under the pieces (soup broth, curry sauce, pizza sauce, dessert base)
    _i("tomato sauce", "Marinara", "sauce", "fill", (190, 40, 30), (220, 80, 60), 0, 0, "cup", 2),
    _i("pesto", "Pesto", "sauce", "fill", (85, 130, 40), (120, 160, 60), 0, 0, "cup", 0.5),
    _i("alfredo sauce", "Alfredo", "sauce", "fill", (240, 230, 200), (250, 245, 225), 0, 0, "cup", 1.5),
    _i("crushed tomatoes", "Tomato", "sauce", "fill", (185, 55, 35), (215, 95, 65), 0, 0, "can", 1),
    _i("butternut squash", "Butternut Squash", "sauce", "fill", (235, 140, 40), (250, 180, 80), 0, 0, "", 1,
       ("peeled and cubed",)),
    _i("split peas", "Split Pea", "sauce", "fill", (140, 165, 60), (170, 190, 90), 0, 0, "cup", 1.5),
    _i("chicken broth", "Chicken", "sauce", "fill", (220, 175, 90), (240, 205, 130), 0, 0, "cup", 4),
    _i("heavy cream", "Cream", "sauce", "fill", (245, 240, 225), (255, 252, 240), 0, 0, "cup", 1),
    _i("yellow curry paste", "Yellow", "sauce", "fill", (230, 170, 40), (245, 200, 90), 0, 0, "tbsp", 3),
    _i("red curry paste", "Red", "sauce", "fill", (195, 75, 35), (225, 120, 70), 0, 0, "tbsp", 3),
    _i("green curry paste", "Green", "sauce", "fill", (125, 150, 55), (165, 185, 95), 0, 0, "tbsp", 3),
    _i("soy sauce", "Soy", "sauce", "fill", (120, 65, 30), (160, 100, 50), 0, 0, "tbsp", 3),
    _i("sweet chili sauce", "Sweet Chili", "sauce", "fill", (215, 90, 45), (240, 140, 80), 0, 0, "tbsp", 3),
    _i("greek yogurt", "Yogurt", "sauce", "fill", (248, 246, 240), (235, 232, 225), 0, 0, "cup", 2),
    _i("chocolate pudding", "Chocolate", "sauce", "fill", (100, 60, 40), (130, 85, 60), 0, 0, "cup", 2),
    _i("pancake mix", "Pancake", "sauce", "fill", (220, 165, 90), (190, 125, 60), 0, 0, "cup", 1.5),
    _i("balsamic vinaigrette", "Balsamic", "sauce", "drizzle", (70, 35, 30), (110, 60, 50), 3, 3, "tbsp", 3),
    _i("ranch dressing", "Ranch", "sauce", "drizzle", (245, 245, 235), (225, 225, 215), 3, 3, "tbsp", 3),
    _i("salsa", "Salsa", "sauce", "blob", (200, 50, 40), (230, 100, 70), 8, 8, "cup", 0.5, weight=0.8),
    _i("mayonnaise", "Mayo", "sauce", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tbsp", 2),
    # pantry: written in every recipe, never visible (as in real photos)
    _i("olive oil", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tbsp", 2),
    _i("salt", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tsp", 1),
    _i("black pepper", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tsp", 0.5, ("freshly ground",)),
    _i("garlic", "Garlic", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "clove", 2, ("minced",)),
    _i("onion", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "", 1, ("diced", "finely chopped")),
    _i("butter", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tbsp", 2),
    _i("sugar", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tbsp", 2),
    _i("vanilla extract", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tsp", 1),
    _i("ginger", "Ginger", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tbsp", 1, ("grated",)),
    _i("coconut milk", "Coconut", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "can", 1),
    _i("lemon juice", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tbsp", 1, ("fresh",)),
    _i("vegetable broth", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "cup", 3),
    _i("cumin", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tsp", 1, ("ground",)),
    _i("chili flakes", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tsp", 0.5),
    _i("sesame oil", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tsp", 2),
    _i("flour", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "tbsp", 2),
    _i("milk", "", "pantry", "none", (0, 0, 0), (0, 0, 0), 0, 0, "cup", 1),
]

INGREDIENTS: dict[str, Ingredient] = {ing.name: ing for ing in _CAT}
if len(INGREDIENTS) != len(_CAT):
    raise RuntimeError("duplicate ingredient names in the synth catalogue")


def visible(name: str) -> bool:
    """Whether an ingredient leaves a mark on the photo (pantry items and mayonnaise do not)."""
    return INGREDIENTS[name].shape != "none"
