"""Dish types: what a dish is served in, what it is built on, which ingredients may top it, how it is cooked.

Instruction templates name ingredient groups: {base} {sauce} {protein} {veg} {garnish} {fruit} {all} {dish}
{n}; a step whose group is empty for a recipe is left out, so the text only mentions what the recipe has.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dish:
    name: str
    containers: tuple[str, ...]  # "plate", "bowl", "board", "skillet"
    bases: tuple[str, ...]  # one is the dish's base (pasta, greens, broth, crust sauce, bread, ...)
    sauces: tuple[str, ...]  # one may be added (empty: none); drawn as a fill colour or drizzle
    sauce_prob: float
    toppings: tuple[str, ...]
    n_toppings: tuple[int, int]  # inclusive range of visible toppings
    pantry: tuple[str, ...]  # invisible staples, 2-5 picked per recipe
    nouns: tuple[str, ...]  # the dish's name in a title; "{base}" stands for the base's title word
    steps: tuple[tuple[str, float], ...]  # (template, probability of being included)


_PASTA_TOP = ("cherry tomatoes", "basil", "parmesan", "shrimp", "chicken breast", "mushrooms", "spinach",
              "broccoli", "bacon", "peas", "black olives", "meatballs", "zucchini", "red bell pepper",
              "asparagus", "sausage", "mozzarella", "parsley", "arugula", "capers", "pine nuts", "feta",
              "eggplant", "kale", "romanesco")
_SALAD_TOP = ("cherry tomatoes", "cucumber", "red onion", "feta", "black olives", "avocado", "carrots", "corn",
              "chicken breast", "eggs", "bacon", "croutons", "parmesan", "strawberries", "walnuts", "almonds",
              "chickpeas", "red bell pepper", "blueberries", "shrimp", "salmon", "mango", "radishes", "beets",
              "pomegranate seeds", "figs", "mint", "basil", "edamame", "purple cabbage", "mandarin oranges",
              "pine nuts", "cheddar", "quinoa")
_SOUP_TOP = ("carrots", "chicken breast", "egg noodles", "croutons", "parsley", "cilantro", "scallions",
             "peas", "black beans", "corn", "potatoes", "mushrooms", "spinach", "basil", "bacon", "tofu",
             "chickpeas", "kale", "sweet potato", "okra", "pine nuts", "cheddar", "parmesan", "shrimp")
_BOWL_TOP = ("avocado", "salmon", "tofu", "edamame", "cucumber", "carrots", "purple cabbage", "corn", "eggs",
             "chickpeas", "black beans", "sweet potato", "shrimp", "chicken breast", "mango", "kale", "spinach",
             "broccoli", "sesame seeds", "scallions", "pickled ginger", "radishes", "beets", "cherry tomatoes",
             "red onion", "feta", "cilantro", "pineapple", "okra")
_DESSERT_TOP = ("strawberries", "blueberries", "raspberries", "banana", "mango", "kiwi", "almonds", "walnuts",
                "granola", "chocolate chips", "honey", "whipped cream", "mint", "dragon fruit",
                "pomegranate seeds", "figs", "starfruit", "blackberries", "coconut flakes", "mandarin oranges",
                "pine nuts")
_PIZZA_TOP = ("pepperoni", "mushrooms", "black olives", "green bell pepper", "red onion", "basil", "arugula",
              "ham", "pineapple", "sausage", "jalapeno", "spinach", "cherry tomatoes", "bacon", "chicken breast",
              "feta", "parmesan", "yellow bell pepper", "eggs", "figs", "capers", "zucchini", "eggplant")
_STIR_TOP = ("broccoli", "red bell pepper", "carrots", "bean sprouts", "chicken breast", "beef sirloin",
             "shrimp", "tofu", "scallions", "sesame seeds", "cashews", "mushrooms", "green beans",
             "yellow bell pepper", "pineapple", "eggs", "edamame", "purple cabbage", "cilantro", "asparagus",
             "romanesco", "zucchini", "peas")
_CURRY_TOP = ("chicken breast", "chickpeas", "potatoes", "cauliflower", "spinach", "peas", "eggplant",
              "sweet potato", "shrimp", "tofu", "cilantro", "red bell pepper", "carrots", "green beans", "rice",
              "cashews", "okra", "lime", "basil", "mushrooms", "broccoli", "pineapple")
_SANDWICH_TOP = ("ham", "turkey", "cheddar", "lettuce", "tomatoes", "cucumber", "avocado", "eggs", "bacon",
                 "red onion", "mozzarella", "basil", "arugula", "spinach", "chicken breast", "salmon",
                 "red bell pepper", "radishes", "feta", "capers", "mushrooms")
_TACO_TOP = ("ground beef", "chicken breast", "black beans", "shrimp", "corn", "purple cabbage", "red onion",
             "cilantro", "avocado", "lime", "cheddar", "salsa", "jalapeno", "tomatoes", "lettuce", "salmon",
             "pineapple", "mango", "radishes", "feta", "sweet potato")

DISHES: dict[str, Dish] = {d.name: d for d in (
    Dish("pasta", ("plate", "bowl"), ("spaghetti", "penne", "fettuccine", "farfalle"),
         ("tomato sauce", "pesto", "alfredo sauce"), 0.75, _PASTA_TOP, (2, 4),
         ("olive oil", "salt", "black pepper", "garlic", "onion", "butter", "chili flakes"),
         ("{base}", "{base}", "Pasta"),
         (("Bring a large pot of salted water to a boil.", 0.8),
          ("Cook the {base} until al dente, about {n} minutes, then drain.", 1.0),
          ("Heat the oil in a large skillet over medium heat.", 0.7),
          ("Add the {protein} and cook until browned, about {n} minutes.", 1.0),
          ("Stir in the {veg} and cook for {n} minutes.", 1.0),
          ("Pour in the {sauce} and simmer gently.", 1.0),
          ("Toss the {base} with the sauce until well coated.", 0.8),
          ("Season with salt and pepper to taste.", 0.6),
          ("Serve topped with the {garnish}.", 1.0))),
    Dish("salad", ("bowl", "plate"), ("lettuce", "spinach", "arugula", "kale"),
         ("balsamic vinaigrette", "ranch dressing"), 0.7, _SALAD_TOP, (3, 5),
         ("olive oil", "salt", "black pepper", "lemon juice", "sugar", "garlic"),
         ("Salad", "Salad", "{base} Salad"),
         (("Wash and dry the {base}.", 0.8),
          ("Cook the {protein} until done and let it cool slightly.", 1.0),
          ("Prepare the {veg}.", 0.7),
          ("Arrange the {base} in a large bowl and top with the {all}.", 1.0),
          ("Sprinkle with the {garnish}.", 1.0),
          ("Whisk the {sauce} and drizzle over the salad.", 1.0),
          ("Toss gently and serve immediately.", 0.7))),
    Dish("soup", ("bowl",), ("crushed tomatoes", "butternut squash", "split peas", "chicken broth", "heavy cream"),
         (), 0.0, _SOUP_TOP, (1, 4),
         ("olive oil", "salt", "black pepper", "garlic", "onion", "vegetable broth", "butter", "cumin"),
         ("Soup", "Soup", "{base} Soup"),
         (("Heat the oil in a large pot over medium heat.", 0.8),
          ("Add the onion and garlic and cook until soft, about {n} minutes.", 0.8),
          ("Add the {base} and the broth and bring to a boil.", 1.0),
          ("Reduce the heat and simmer for {n} minutes.", 1.0),
          ("Stir in the {protein} and cook through.", 1.0),
          ("Add the {veg} and simmer until tender.", 1.0),
          ("Blend until smooth if you like.", 0.4),
          ("Ladle into bowls and top with the {garnish}.", 1.0))),
    Dish("bowl", ("bowl",), ("rice", "quinoa"), ("soy sauce", "sweet chili sauce"), 0.5, _BOWL_TOP, (3, 5),
         ("salt", "sesame oil", "lemon juice", "ginger", "garlic", "olive oil"),
         ("Bowl", "Bowl", "{base} Bowl", "Buddha Bowl", "Poke Bowl"),
         (("Cook the {base} according to package directions.", 1.0),
          ("Season the {protein} and cook until done, about {n} minutes.", 1.0),
          ("Prepare the {veg}.", 0.8),
          ("Divide the {base} between bowls.", 1.0),
          ("Arrange the {all} in sections on top.", 1.0),
          ("Drizzle with the {sauce}.", 1.0),
          ("Finish with the {garnish} and serve.", 1.0))),
    Dish("dessert", ("bowl", "plate"), ("greek yogurt", "chocolate pudding", "pancake mix"), ("honey",), 0.3,
         _DESSERT_TOP, (2, 4), ("sugar", "vanilla extract", "butter", "milk", "flour"),
         ("{base}", "{base} Dessert", "{base} Treat"),
         (("Prepare the {base} and let it set.", 1.0),
          ("Wash and slice the {fruit}.", 1.0),
          ("Spoon the {base} onto the serving dish.", 0.8),
          ("Top with the {all}.", 1.0),
          ("Drizzle with the {sauce}.", 1.0),
          ("Garnish with the {garnish} and serve chilled.", 1.0))),
    Dish("pizza", ("board",), ("tomato sauce", "pesto", "alfredo sauce"), (), 0.0, _PIZZA_TOP, (1, 4),
         ("olive oil", "flour", "salt", "garlic", "sugar"), ("Pizza", "Pizza", "Flatbread"),
         (("Preheat the oven to {t} degrees.", 0.9),
          ("Roll out the dough into a large circle.", 1.0),
          ("Spread the {base} over the dough.", 1.0),
          ("Sprinkle the cheese over the sauce and top with the {protein}.", 1.0),
          ("Scatter the {veg} over the pizza.", 1.0),
          ("Bake for {n} minutes until the crust is golden.", 1.0),
          ("Finish with the {garnish} before serving.", 1.0))),
    Dish("stir-fry", ("skillet", "plate"), ("rice noodles", "egg noodles", "rice"),
         ("soy sauce", "sweet chili sauce"), 0.9, _STIR_TOP, (3, 5),
         ("sesame oil", "garlic", "ginger", "sugar", "salt", "chili flakes"),
         ("Stir-Fry", "Stir-Fry", "{base} Stir-Fry"),
         (("Cook the {base} and set aside.", 1.0),
          ("Heat the oil in a wok over high heat.", 0.9),
          ("Stir-fry the {protein} for {n} minutes until cooked.", 1.0),
          ("Add the garlic and ginger and cook for 30 seconds.", 0.6),
          ("Add the {veg} and stir-fry until crisp-tender.", 1.0),
          ("Return the {base} to the wok and pour in the {sauce}.", 1.0),
          ("Toss everything together until glossy.", 0.7),
          ("Sprinkle with the {garnish} and serve hot.", 1.0))),
    Dish("curry", ("bowl",), ("yellow curry paste", "red curry paste", "green curry paste"), (), 0.0,
         _CURRY_TOP, (2, 4), ("coconut milk", "onion", "garlic", "ginger", "salt", "cumin", "olive oil"),
         ("Curry", "{base} Curry", "Curry"),
         (("Heat the oil in a large pan over medium heat.", 0.8),
          ("Cook the onion, garlic and ginger until fragrant.", 0.7),
          ("Stir in the {base} and cook for 1 minute.", 1.0),
          ("Add the {protein} and brown on all sides.", 1.0),
          ("Pour in the coconut milk and bring to a simmer.", 1.0),
          ("Add the {veg} and simmer for {n} minutes.", 1.0),
          ("Season with salt to taste.", 0.5),
          ("Serve garnished with the {garnish}.", 1.0))),
    Dish("sandwich", ("board", "plate"), ("bread", "whole wheat bread"), ("mayonnaise",), 0.5, _SANDWICH_TOP,
         (2, 5), ("butter", "salt", "black pepper"), ("Sandwich", "Sandwich", "Toast", "Open Sandwich"),
         (("Toast the {base} until golden.", 1.0),
          ("Spread the {sauce} on the bread.", 1.0),
          ("Layer the {protein} on the bread.", 1.0),
          ("Add the {veg}.", 1.0),
          ("Season with salt and pepper.", 0.5),
          ("Top with the {garnish} and serve.", 1.0))),
    Dish("tacos", ("plate", "board"), ("tortillas",), ("salsa",), 0.4, _TACO_TOP, (3, 5),
         ("olive oil", "cumin", "salt", "garlic", "chili flakes", "lemon juice"), ("Tacos", "Tacos", "Street Tacos"),
         (("Season the {protein} with the spices.", 1.0),
          ("Cook the {protein} in a hot skillet for {n} minutes.", 1.0),
          ("Warm the {base} in a dry pan.", 1.0),
          ("Prepare the {veg}.", 0.7),
          ("Fill the tortillas with the {all}.", 1.0),
          ("Spoon the {sauce} on top.", 1.0),
          ("Garnish with the {garnish} and serve.", 1.0))),
)}

# How often each dish is drawn: real recipe sites are heavy on pasta, salads and desserts.
DISH_WEIGHTS: dict[str, float] = {
    "pasta": 1.3, "salad": 1.3, "soup": 1.0, "bowl": 0.9, "dessert": 1.1, "pizza": 0.9, "stir-fry": 0.9,
    "curry": 0.8, "sandwich": 0.9, "tacos": 0.8,
}

# Groups the instruction templates refer to; "garnish" is what goes on last.
GARNISH_CATEGORIES = ("herb", "cheese", "nut")
